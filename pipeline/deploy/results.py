"""Result records: one JSON file per deploy under results/, written atomically."""

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomically
from pipeline.board.facts import BoardFacts
from pipeline.deploy.check import CheckResult
from pipeline.deploy.timing import TimingStats
from pipeline.paths import RESULTS_DIR

SCHEMA_VERSION = 2


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
    target: dict[str, Any]
    threads: int
    build: dict[str, Any]
    push: dict[str, Any]
    runtime_arch: str
    board_facts: BoardFacts
    timings: Timings
    check: CheckResult
    coverage: list[dict[str, Any]]
    coverage_tuned_share: float
    record_store_version: str
    schema_version: int = SCHEMA_VERSION


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_result(result: DeployResult, results_dir: Path = RESULTS_DIR) -> Path:
    """Atomic, so an interrupt never leaves half a record."""
    folder = results_dir / result.board
    folder.mkdir(parents=True, exist_ok=True)
    stamp = result.created.replace("-", "").replace(":", "")
    path = folder / f"{result.model}-{stamp}-{uuid.uuid4().hex[:4]}.json"
    write_atomically(path, (json.dumps(asdict(result), indent=2) + "\n").encode())
    return path


def load_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
