"""Performance history: every measured result in one SQLite file, queryable by board and model.

Each result (with its runs, coverage table and comparison verdict) is written in one transaction,
so an interrupt or a crash never leaves half a record: a reader sees a result completely or not
at all. Several nightly runs (one per board) may write to the same file; SQLite serialises them.
The full result dict is kept as JSON besides the queryable columns, so nothing a deploy recorded
is lost when the schema does not name it yet.
"""

import json
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.nightly.causes import Cause
from pipeline.nightly.compare import Verdict
from pipeline.paths import RESULTS_DIR, ROOT

SCHEMA_VERSION = 1
DEFAULT_PATH = RESULTS_DIR / "history.sqlite"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE results (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    board TEXT NOT NULL,
    model TEXT NOT NULL,
    timing_kind TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    target TEXT NOT NULL,
    threads INTEGER NOT NULL,
    pipeline_commit TEXT,
    record_store_version TEXT,
    governor TEXT,
    cur_freq_khz INTEGER,
    temperature_c REAL,
    check_passed INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX results_by_point ON results (board, model, created);
CREATE TABLE runs (
    result_id INTEGER NOT NULL REFERENCES results (id),
    position INTEGER NOT NULL,
    ms REAL NOT NULL,
    PRIMARY KEY (result_id, position)
);
CREATE TABLE coverage (
    result_id INTEGER NOT NULL REFERENCES results (id),
    task TEXT NOT NULL,
    workload TEXT NOT NULL,
    flops REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('tuned', 'fallback'))
);
CREATE TABLE comparisons (
    result_id INTEGER PRIMARY KEY REFERENCES results (id),
    baseline_id INTEGER NOT NULL REFERENCES results (id),
    change TEXT NOT NULL,
    ratio REAL NOT NULL,
    p_value REAL,
    method TEXT NOT NULL,
    reason TEXT NOT NULL,
    causes TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Provenance:
    """What produced a result besides the board: this pipeline's commit and the tuning record store's version."""

    pipeline_commit: str | None
    record_store_version: str | None


@dataclass(frozen=True)
class Comparison:
    """A result's verdict against the earlier result it was compared with."""

    baseline_id: int
    verdict: Verdict
    causes: list[Cause]


@dataclass(frozen=True)
class Entry:
    """One stored result. `record` is the result dict with `provenance` merged in, as causes.py reads it."""

    id: int
    created: str
    board: str
    model: str
    check_passed: bool
    runs_ms: list[float]
    record: dict[str, Any]
    change: str | None
    causes: list[Cause]


def pipeline_commit(root: Path = ROOT) -> str | None:
    """HEAD of the pipeline's checkout, with '-dirty' when it has uncommitted changes; None outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


class History:
    """The history database at `path` (created with its schema on first use)."""

    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._ensure_schema()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of failing mid-way."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _ensure_schema(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise PipelineError(
                    f"history database {self.path} has schema version {version}, this pipeline reads {SCHEMA_VERSION}",
                    "use the pipeline version that wrote it, or pass another history path",
                )

    def add(self, result: Mapping[str, Any], provenance: Provenance, comparison: Comparison | None = None) -> int:
        """Store one result with its runs, coverage and verdict; returns its id."""
        record = {**result, "provenance": asdict(provenance)}
        facts = record.get("board_facts") or {}
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT INTO results (created, board, model, timing_kind, tvm_version, target, threads, pipeline_commit,"
                " record_store_version, governor, cur_freq_khz, temperature_c, check_passed, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record["created"],
                    record["board"],
                    record["model"],
                    record["timing_kind"],
                    record["tvm_version"],
                    json.dumps(record["target"], sort_keys=True),
                    record["threads"],
                    provenance.pipeline_commit,
                    provenance.record_store_version,
                    facts.get("governor"),
                    facts.get("cur_freq_khz"),
                    facts.get("temperature_c"),
                    bool(record["check"]["passed"]),
                    json.dumps(record),
                ),
            ).lastrowid
            assert inserted is not None  # an INSERT always sets it
            result_id = inserted
            db.executemany(
                "INSERT INTO runs (result_id, position, ms) VALUES (?, ?, ?)",
                [(result_id, position, float(ms)) for position, ms in enumerate(record["timings"]["runs_ms"])],
            )
            db.executemany(
                "INSERT INTO coverage (result_id, task, workload, flops, status) VALUES (?, ?, ?, ?, ?)",
                [
                    (result_id, entry["task"], entry["workload"], float(entry["flops"]), entry["status"])
                    for entry in record.get("coverage") or []
                ],
            )
            if comparison is not None:
                verdict = comparison.verdict
                db.execute(
                    "INSERT INTO comparisons (result_id, baseline_id, change, ratio, p_value, method, reason, causes)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result_id,
                        comparison.baseline_id,
                        verdict.change,
                        verdict.ratio,
                        verdict.p_value,
                        verdict.method,
                        verdict.reason,
                        json.dumps([asdict(cause) for cause in comparison.causes]),
                    ),
                )
        return result_id

    def baseline(self, board: str, model: str, timing_kind: str) -> Entry | None:
        """The latest earlier result of this point whose output check passed: what tonight is compared with."""
        rows = self._select(
            "WHERE r.board = ? AND r.model = ? AND r.timing_kind = ? AND r.check_passed"
            " ORDER BY r.created DESC, r.id DESC LIMIT 1",
            (board, model, timing_kind),
        )
        return rows[0] if rows else None

    def series(self, board: str, model: str) -> list[Entry]:
        """All results of one point, oldest first (for the plots)."""
        return self._select("WHERE r.board = ? AND r.model = ? ORDER BY r.created, r.id", (board, model))

    def points(self) -> list[tuple[str, str]]:
        return [
            tuple(row) for row in self._db.execute("SELECT DISTINCT board, model FROM results ORDER BY board, model")
        ]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def _select(self, where: str, params: Sequence[Any]) -> list[Entry]:
        rows = self._db.execute(
            "SELECT r.id, r.created, r.board, r.model, r.check_passed, r.record, c.change, c.causes"
            f" FROM results r LEFT JOIN comparisons c ON c.result_id = r.id {where}",
            params,
        ).fetchall()
        return [
            Entry(
                id=row[0],
                created=row[1],
                board=row[2],
                model=row[3],
                check_passed=bool(row[4]),
                runs_ms=self._runs(row[0]),
                record=json.loads(row[5]),
                change=row[6],
                causes=[Cause(**cause) for cause in json.loads(row[7] or "[]")],
            )
            for row in rows
        ]

    def _runs(self, result_id: int) -> list[float]:
        rows = self._db.execute("SELECT ms FROM runs WHERE result_id = ? ORDER BY position", (result_id,))
        return [row[0] for row in rows]
