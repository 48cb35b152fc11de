"""Copies of the record store by version, as nightly deploys used it.

Why: the store lives in the checkout and changes with it (a commit, a tuning run), and a result only
names its store's version. When a point's regression comes with a changed store, the A/B session
rebuilds tonight's model with the baseline's records, to test the records as the cause, and a baseline
build gone from the cache is rebuilt with them. Only this copy still has those records.
"""

import shutil
import tempfile
from pathlib import Path

from pipeline.paths import CACHE_DIR
from pipeline.records.store import RecordStore

SNAPSHOTS_DIR = CACHE_DIR / "record-stores"


def keep_snapshot(store: RecordStore, root: Path = SNAPSHOTS_DIR) -> Path:
    """The folder holding a copy of `store`'s readable records, made once per store version (files
    that could not be read are not part of the version, so they are not copied)."""
    path = root / store.version
    if path.is_dir():
        return path
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{store.version}-", dir=root))
    try:
        for stored in store.records:
            copy = staging / stored.path.relative_to(store.root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stored.path, copy)
        staging.rename(path)
    except OSError:
        if not path.is_dir():  # another nightly made the same copy first: theirs is as good
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def find_snapshot(version: str, root: Path = SNAPSHOTS_DIR) -> Path | None:
    """The copy of the store of this version, if a deploy kept one."""
    path = root / version
    return path if version and path.is_dir() else None
