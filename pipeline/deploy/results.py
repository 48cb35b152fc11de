"""Result records: one JSON file per deploy under results/, written atomically and read back typed.

A result file carries its `schema_version`; `DeployResult.from_json` reads every version this
pipeline ever wrote (migrating older ones, as asv does with its results) and refuses newer or
broken ones with an error naming the file. What changed per version:

- 1: the first results. No coverage table in the result itself, no record store version; the build
  summary carries the coverage table only in results written after the record store existed.
- 2: `coverage` (one entry per task), `coverage_tuned_share` and `record_store_version` added.
  Within version 2, later fields with defaults appeared without a version bump: a coverage entry's
  `schedule` (and the build table's `schedule`, `source`, `emulated`), the board facts'
  per-core clocks, the runner's `peak_rss_kb` and the per-kernel `kernel_times`; readers fill their
  defaults (None, an empty list).
"""

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pipeline.atomic import write_atomically
from pipeline.board.facts import BoardFacts
from pipeline.board.profile import TargetSpec
from pipeline.board.sync import PushReport
from pipeline.compiler.builder import BuildArtifact
from pipeline.compiler.coverage import CoverageEntry
from pipeline.deploy.check import CheckResult
from pipeline.deploy.execute import KernelTime
from pipeline.deploy.timing import TimingStats
from pipeline.errors import PipelineError, write_log
from pipeline.paths import RESULTS_DIR
from pipeline.validation import NotReadable, first_error, versioned_document

SCHEMA_VERSION = 2
UNKNOWN_STORE = "unknown"  # the record store version of results written before it was recorded


@dataclass(frozen=True)
class Timings:
    load_ms: float
    first_ms: float
    warmup_ms: list[float]
    runs_ms: list[float]
    stats: TimingStats


@dataclass(frozen=True)
class DeployResult:
    """Everything needed later to compare two deploys: what ran where, how fast, and whether it was right."""

    created: str
    board: str
    emulated: bool
    timing_kind: str
    model: str
    tvm_version: str
    target: TargetSpec
    threads: int
    build: BuildArtifact
    push: PushReport
    runtime_arch: str
    board_facts: BoardFacts
    timings: Timings
    check: CheckResult
    coverage: list[CoverageEntry]
    coverage_tuned_share: float
    record_store_version: str
    schema_version: int = SCHEMA_VERSION
    peak_rss_kb: int | None = None  # the runner process's peak resident memory on the board
    kernel_times: list[KernelTime] = field(default_factory=list)  # per inference, when profiled

    def to_json(self, indent: int | None = 2) -> str:
        """The result file's text: the dataclasses' fields in order, paths as strings."""
        return json.dumps(asdict(self), indent=indent, default=_json_value) + ("\n" if indent else "")

    @staticmethod
    def from_json(text: str | bytes, source: str) -> "DeployResult":
        """Read a result of any schema version up to this one; `source` (a file, a database row) names
        it in the error when it is newer than this pipeline or not a result at all."""
        try:
            data, version = versioned_document(text, source, "result", SCHEMA_VERSION)
        except NotReadable as exc:
            raise _broken(source, str(exc)) from None
        if version == 1:
            data = _from_version_1(data)
        try:
            return _ADAPTER.validate_python({**data, "schema_version": SCHEMA_VERSION})
        except ValidationError as exc:
            raise _broken(source, first_error(exc), str(exc)) from None


_ADAPTER = TypeAdapter(DeployResult)


def _json_value(value: object) -> object:
    """Paths as strings, the target as the dict TVM takes (the file's format since version 1)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, TargetSpec):
        return value.as_tvm_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _broken(source: str, detail: str, long_text: str | None = None) -> PipelineError:
    log = write_log("result", long_text) if long_text else None
    return PipelineError(
        f"{source} is not a readable deploy result: {detail}", "remove the file or restore it from a backup", log
    )


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: the coverage entries and tuned share come from the build's coverage table when it
    has one; builds from before the record store applied no records (nothing tuned, nothing measured)."""
    build = dict(data.get("build") or {})
    table = build.setdefault("coverage", {"tasks": [], "tuned_share": 0.0, "records_applicable": 0, "problems": []})
    entries = [
        {
            "task": task.get("task"),
            "workload": task.get("workload"),
            "operator": task.get("operator"),
            "heavy": task.get("heavy"),
            "flops": task.get("flops"),
            "share": task.get("share"),
            "status": "tuned" if task.get("tuned") else "fallback",
            "schedule": task.get("schedule", ""),
        }
        for task in table.get("tasks") or []
    ]
    return {
        **data,
        "build": build,
        "coverage": entries,
        "coverage_tuned_share": table.get("tuned_share", 0.0),
        "record_store_version": UNKNOWN_STORE,
    }


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_result(result: DeployResult, results_dir: Path = RESULTS_DIR) -> Path:
    """Atomic, so an interrupt never leaves half a record."""
    folder = results_dir / result.board
    folder.mkdir(parents=True, exist_ok=True)
    stamp = result.created.replace("-", "").replace(":", "")
    path = folder / f"{result.model}-{stamp}-{uuid.uuid4().hex[:4]}.json"
    write_atomically(path, result.to_json().encode())
    return path


def load_result(path: Path) -> DeployResult:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read result {path}: {exc.strerror}", "check the path") from None
    return DeployResult.from_json(text, str(path))
