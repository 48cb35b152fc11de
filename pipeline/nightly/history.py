"""Performance history: every measured result in one SQLite file, queryable by board and model.

Each result (with its runs, coverage table and comparison verdict) is written in one transaction,
so an interrupt or a crash never leaves half a record: a reader sees a result completely or not
at all. Several nightly runs (one per board) may write to the same file; SQLite serialises them.
The whole result is kept as JSON besides the queryable columns, so nothing a deploy recorded is
lost when the tables do not name it, and it reads back as a typed DeployResult (older result
schemas migrated on the way, see pipeline.deploy.results).

Database versions (PRAGMA user_version): 1 kept the result JSON with the run's provenance merged
in, in a column `record`; 2 keeps the result JSON as the deploy wrote it, in a column `result`, and
the provenance only in its own columns; 3 adds the A/B confirmation of a flagged comparison
(`confirmation`: its state, `confirmation_detail`: its pairs and per-task times as JSON) and a table
`kernel_times` (per-task times of profiled runs); 4 adds the bisection of a confirmed regression
(`culprit`: its one line, the first commit that made it slower or what it could not decide). An older
database is migrated when it is opened.
"""

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from pipeline.deploy.execute import KernelTime
from pipeline.deploy.results import DeployResult
from pipeline.errors import PipelineError
from pipeline.nightly.causes import Cause
from pipeline.nightly.confirm import Confirmation
from pipeline.nightly.provenance import RunProvenance
from pipeline.paths import RESULTS_DIR
from pipeline.stats import Verdict

SCHEMA_VERSION = 4
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
    result TEXT NOT NULL
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
    causes TEXT NOT NULL,
    confirmation TEXT,
    confirmation_detail TEXT,
    culprit TEXT
);
CREATE TABLE kernel_times (
    result_id INTEGER NOT NULL REFERENCES results (id),
    name TEXT NOT NULL,
    calls INTEGER NOT NULL,
    ms REAL NOT NULL
);
"""
_KERNEL_TIMES = _SCHEMA[_SCHEMA.index("CREATE TABLE kernel_times") :]


@dataclass(frozen=True)
class Comparison:
    """A result's verdict against the earlier result it was compared with, and the A/B session's
    answer when the verdict was flagged."""

    baseline_id: int
    verdict: Verdict
    causes: list[Cause]
    confirmation: Confirmation | None = None


@dataclass(frozen=True)
class Entry:
    """One stored result, what produced it, and its verdict against its baseline (`change` is None
    when it was not compared)."""

    id: int
    result: DeployResult
    provenance: RunProvenance
    change: str | None
    causes: list[Cause]
    confirmation: Confirmation | None = None
    culprit: str | None = None  # the bisection's line, for a confirmed regression whose pipeline commit changed

    @property
    def confirmed_change(self) -> str | None:
        """The change this result stands for: the A/B-confirmed one; a flag stored before A/B existed
        counts as it was reported."""
        if self.confirmation is not None:
            return self.confirmation.confirmed_change
        return self.change if self.change in ("regression", "improvement") else None


_CONFIRMATION = TypeAdapter(Confirmation)


class History:
    """The history database at `path` (created with its schema on first use, migrated when older)."""

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
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            elif version in (1, 2, 3):
                if version == 1:
                    _migrate_from_version_1(db, self.path)
                if version <= 2:
                    _migrate_from_version_2(db, self.path)
                _migrate_from_version_3(db)
            else:
                raise PipelineError(
                    f"history database {self.path} has schema version {version}, this pipeline reads {SCHEMA_VERSION}",
                    "use the pipeline version that wrote it, or pass another history path",
                )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def add(self, result: DeployResult, provenance: RunProvenance, comparison: Comparison | None = None) -> int:
        """Store one result with its runs, coverage and verdict; returns its id."""
        facts = result.board_facts
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT INTO results (created, board, model, timing_kind, tvm_version, target, threads, pipeline_commit,"
                " record_store_version, governor, cur_freq_khz, temperature_c, check_passed, result)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result.created,
                    result.board,
                    result.model,
                    result.timing_kind,
                    result.tvm_version,
                    json.dumps(result.target.as_tvm_dict(), sort_keys=True),
                    result.threads,
                    provenance.pipeline_commit,
                    provenance.record_store_version,
                    facts.governor,
                    facts.cur_freq_khz,
                    facts.temperature_c,
                    result.check.passed,
                    result.to_json(indent=None),
                ),
            ).lastrowid
            assert inserted is not None  # an INSERT always sets it
            result_id = inserted
            db.executemany(
                "INSERT INTO runs (result_id, position, ms) VALUES (?, ?, ?)",
                [(result_id, position, float(ms)) for position, ms in enumerate(result.timings.runs_ms)],
            )
            db.executemany(
                "INSERT INTO coverage (result_id, task, workload, flops, status) VALUES (?, ?, ?, ?, ?)",
                [(result_id, entry.task, entry.workload, entry.flops, entry.status) for entry in result.coverage],
            )
            _insert_kernel_times(db, result_id, result.kernel_times)
            if comparison is not None:
                verdict = comparison.verdict
                confirmation = comparison.confirmation
                db.execute(
                    "INSERT INTO comparisons (result_id, baseline_id, change, ratio, p_value, method, reason, causes,"
                    " confirmation, confirmation_detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result_id,
                        comparison.baseline_id,
                        verdict.change,
                        verdict.ratio,
                        verdict.p_value,
                        verdict.method,
                        verdict.reason,
                        json.dumps([asdict(cause) for cause in comparison.causes]),
                        confirmation.state if confirmation else None,
                        _CONFIRMATION.dump_json(confirmation).decode() if confirmation else None,
                    ),
                )
        return result_id

    def set_culprit(self, result_id: int, line: str) -> None:
        """Keep the bisection's line with the result's comparison (the bisection runs after the result is stored,
        so a night interrupted during a long bisection keeps its result)."""
        with self._transaction() as db:
            db.execute("UPDATE comparisons SET culprit = ? WHERE result_id = ?", (line, result_id))

    def baseline(self, board_name: str, model: str, timing_kind: str) -> Entry | None:
        """The latest earlier result of this point whose output check passed: what tonight is compared with."""
        rows = self._select(
            "WHERE r.board = ? AND r.model = ? AND r.timing_kind = ? AND r.check_passed"
            " ORDER BY r.created DESC, r.id DESC LIMIT 1",
            (board_name, model, timing_kind),
        )
        return rows[0] if rows else None

    def window(self, board_name: str, model: str, timing_kind: str, size: int) -> list[Entry]:
        """Up to `size` latest results of this point whose output check passed, oldest first, none from
        before the latest confirmed change: after a step, the new level is the reference."""
        newest_first = self._select(
            "WHERE r.board = ? AND r.model = ? AND r.timing_kind = ? AND r.check_passed"
            " ORDER BY r.created DESC, r.id DESC LIMIT ?",
            (board_name, model, timing_kind, size),
        )
        window = []
        for entry in newest_first:
            window.append(entry)
            if entry.confirmed_change is not None:
                break
        return window[::-1]

    def kernel_times(self, result_id: int) -> list[KernelTime]:
        """Per-task times of a result's profiled runs, slowest first (empty when it was not profiled)."""
        rows = self._db.execute(
            "SELECT name, calls, ms FROM kernel_times WHERE result_id = ? ORDER BY ms DESC, name", (result_id,)
        ).fetchall()
        return [KernelTime(name, calls, ms) for name, calls, ms in rows]

    def series(self, board_name: str, model: str) -> list[Entry]:
        """All results of one point, oldest first (for the plots)."""
        return self._select("WHERE r.board = ? AND r.model = ? ORDER BY r.created, r.id", (board_name, model))

    def points(self) -> list[tuple[str, str]]:
        return [
            tuple(row) for row in self._db.execute("SELECT DISTINCT board, model FROM results ORDER BY board, model")
        ]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def _select(self, where: str, params: Sequence[Any]) -> list[Entry]:
        rows = self._db.execute(
            "SELECT r.id, r.result, r.pipeline_commit, r.record_store_version, c.change, c.causes,"
            " c.confirmation_detail, c.culprit"
            f" FROM results r LEFT JOIN comparisons c ON c.result_id = r.id {where}",
            params,
        ).fetchall()
        return [
            Entry(
                id=row[0],
                result=DeployResult.from_json(row[1], f"result {row[0]} in history database {self.path}"),
                provenance=RunProvenance(pipeline_commit=row[2], record_store_version=row[3]),
                change=row[4],
                causes=[Cause(**cause) for cause in json.loads(row[5] or "[]")],
                confirmation=_CONFIRMATION.validate_json(row[6]) if row[6] else None,
                culprit=row[7],
            )
            for row in rows
        ]


def _migrate_from_version_1(db: sqlite3.Connection, path: Path) -> None:
    """Version 1 -> 2: the `record` column becomes `result` and loses the merged-in provenance, which
    its own columns already hold. Runs inside the caller's transaction: all of it or nothing."""
    db.execute("ALTER TABLE results RENAME COLUMN record TO result")
    for result_id, text in db.execute("SELECT id, result FROM results").fetchall():
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise PipelineError(
                f"history database {path}: result {result_id} is not JSON, so the database cannot be migrated",
                "restore the database from a backup, or pass another history path",
            ) from None
        data.pop("provenance", None)
        db.execute("UPDATE results SET result = ? WHERE id = ?", (json.dumps(data), result_id))


def _migrate_from_version_2(db: sqlite3.Connection, path: Path) -> None:
    """Version 2 -> 3: comparisons get their (empty) A/B confirmation columns, and the per-task times
    that results already carry in their JSON get their own table."""
    db.execute("ALTER TABLE comparisons ADD COLUMN confirmation TEXT")
    db.execute("ALTER TABLE comparisons ADD COLUMN confirmation_detail TEXT")
    db.execute(_KERNEL_TIMES)
    for result_id, text in db.execute("SELECT id, result FROM results").fetchall():
        result = DeployResult.from_json(text, f"result {result_id} in history database {path}")
        _insert_kernel_times(db, result_id, result.kernel_times)


def _migrate_from_version_3(db: sqlite3.Connection) -> None:
    """Version 3 -> 4: comparisons get their (empty) bisection column."""
    db.execute("ALTER TABLE comparisons ADD COLUMN culprit TEXT")


def _insert_kernel_times(db: sqlite3.Connection, result_id: int, kernels: Sequence[KernelTime]) -> None:
    db.executemany(
        "INSERT INTO kernel_times (result_id, name, calls, ms) VALUES (?, ?, ?, ?)",
        [(result_id, k.name, k.calls, k.ms) for k in kernels if math.isfinite(k.ms)],
    )
