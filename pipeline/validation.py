"""What every typed file of the pipeline shares: the strict pydantic base, the one-line message of a
validation error, and reading a JSON document that carries a schema version."""

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import PipelineError


class StrictModel(BaseModel):
    """Unknown fields are errors (a typo must not pass silently); values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def first_error(exc: ValidationError) -> str:
    """`field 'a.b': why (and 2 more)`: the first problem, short enough for one error line."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field '{where}': {first['msg'].removeprefix('Value error, ')}{more}"


class NotReadable(ValueError):
    """The text is not a document of the expected kind; the reader turns it into its own error."""


def versioned_document(
    text: str | bytes, source: str, kind: str, current: int, unversioned: int | None = None
) -> tuple[dict[str, Any], int]:
    """The JSON object and its `schema_version` (`unversioned` when the field is absent: files written
    before there was one). A version newer than `current` is a PipelineError: this pipeline is too old."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotReadable(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NotReadable("not a JSON object")
    version = data.get("schema_version", unversioned)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NotReadable(f"no valid schema_version ({version!r})")
    if version > current:
        raise PipelineError(
            f"{source} has {kind} schema version {version}, this pipeline reads up to {current}",
            "update the pipeline (git pull) to read it",
        )
    return data, version
