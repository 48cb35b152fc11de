"""Stamp files: a folder built once (a runtime bundle, a release's environment) carries the JSON key it
was built from, and is reused only while the key and the files it must hold are unchanged."""

import json
from collections.abc import Iterable
from pathlib import Path


def write_stamp(stamp: Path, key: object) -> None:
    """Written last into the staging folder, so a folder without its stamp is never taken as finished."""
    stamp.write_text(json.dumps(key, indent=2) + "\n")


def is_current(stamp: Path, key: object, required: Iterable[Path] = ()) -> bool:
    """The stamp says `key` and every required file exists; a missing or broken stamp means rebuild."""
    try:
        return json.loads(stamp.read_text()) == key and all(path.is_file() for path in required)
    except (OSError, json.JSONDecodeError):
        return False
