"""The history database: what goes in comes out typed, an interrupted write never leaves half a record,
and a database written by the previous version is migrated when opened."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from synthetic import latencies, synthetic_result, vgg16_coverage

from pipeline.deploy.execute import KernelTime
from pipeline.errors import PipelineError
from pipeline.nightly.causes import Cause
from pipeline.nightly.confirm import Confirmation, State
from pipeline.nightly.history import Comparison, History
from pipeline.nightly.provenance import RunProvenance, pipeline_commit
from pipeline.paths import ROOT
from pipeline.stats import compare_pairs, compare_samples

PROVENANCE = RunProvenance(pipeline_commit="c0ffee" * 6 + "abcd", record_store_version="records-v3")


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite") as store:
        yield store


def test_a_result_round_trips_with_runs_coverage_provenance_and_verdict(history: History) -> None:
    baseline = synthetic_result(latencies(990, 10, 0), created="2026-11-24T02:30:00Z", coverage=vgg16_coverage("tuned"))
    first = history.add(baseline, PROVENANCE)
    current = synthetic_result(latencies(1890, 10, 1), coverage=vgg16_coverage("fallback"))
    verdict = compare_samples(baseline.timings.runs_ms, current.timings.runs_ms)
    cause = Cause("coverage_lost", "9 conv2d workloads lost their tuned schedule")
    second = history.add(current, PROVENANCE, Comparison(first, verdict, [cause]))

    old, new = history.series("rk3399", "vgg16")
    assert (old.id, new.id) == (first, second)
    assert (old.result, new.result) == (baseline, current)
    assert new.result.board_facts.governor == "performance"
    assert new.provenance == PROVENANCE
    assert (old.change, new.change) == (None, "regression")
    assert new.causes == [cause]
    assert history.points() == [("rk3399", "vgg16")]
    history.set_culprit(second, "culprit: c0ffee default schedules: no register tile")
    assert [entry.culprit for entry in history.series("rk3399", "vgg16")] == [
        None,
        "culprit: c0ffee default schedules: no register tile",
    ]


def test_the_baseline_is_the_latest_earlier_result_whose_output_was_right(history: History) -> None:
    good = history.add(synthetic_result([1.0], created="2026-11-23T02:30:00Z"), PROVENANCE)
    history.add(synthetic_result([1.0], created="2026-11-24T02:30:00Z", passed=False), PROVENANCE)
    history.add(synthetic_result([1.0], created="2026-11-24T02:30:00Z", model="tiny"), PROVENANCE)
    baseline = history.baseline("rk3399", "vgg16", "native")
    assert baseline is not None and baseline.id == good
    assert history.baseline("rk3399", "vgg16", "emulated") is None


def test_a_write_that_fails_half_way_leaves_nothing_of_itself_and_keeps_the_rest(history: History) -> None:
    kept = history.add(synthetic_result([1.0, 2.0]), PROVENANCE)
    broken = synthetic_result([1.0, 2.0])
    broken.timings.runs_ms.append("not a number")  # type: ignore[arg-type]  # fails after the result row is inserted
    with pytest.raises(ValueError):
        history.add(broken, PROVENANCE)
    assert [entry.id for entry in history.series("rk3399", "vgg16")] == [kept]
    orphans = sqlite3.connect(history.path).execute("SELECT COUNT(*) FROM runs WHERE result_id != ?", (kept,))
    assert orphans.fetchone()[0] == 0


WRITER = """
import sys
from collections.abc import Iterator
from pathlib import Path
from pipeline.nightly.history import History
from pipeline.nightly.provenance import RunProvenance
from synthetic import latencies, synthetic_result, vgg16_coverage
with History(Path(sys.argv[1])) as store:
    for i in range(100000):
        result = synthetic_result(latencies(10, 500, i), coverage=vgg16_coverage("tuned"))
        store.add(result, RunProvenance(None, None))
        if i == 2:
            print("writing", flush=True)
"""


def test_a_writer_killed_mid_run_leaves_only_complete_records(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    ) as writer:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        time.sleep(0.3)
        writer.send_signal(signal.SIGKILL)
    with History(path) as store:
        entries = store.series("rk3399", "vgg16")
        assert len(entries) >= 3
        assert all(len(entry.result.timings.runs_ms) == 500 and len(entry.result.coverage) == 12 for entry in entries)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    runs_per_result = db.execute("SELECT COUNT(*) FROM runs GROUP BY result_id").fetchall()
    assert runs_per_result == [(500,)] * len(entries)


def test_a_database_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    sqlite3.connect(path).execute("PRAGMA user_version = 99")
    with pytest.raises(PipelineError, match="schema version 99"):
        History(path)


def test_the_pipeline_commit_is_this_checkouts_head() -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit = pipeline_commit()
    assert commit is not None and commit.startswith(head)


VERSION_1_SCHEMA = """
CREATE TABLE results (
    id INTEGER PRIMARY KEY, created TEXT NOT NULL, board TEXT NOT NULL, model TEXT NOT NULL,
    timing_kind TEXT NOT NULL, tvm_version TEXT NOT NULL, target TEXT NOT NULL, threads INTEGER NOT NULL,
    pipeline_commit TEXT, record_store_version TEXT, governor TEXT, cur_freq_khz INTEGER, temperature_c REAL,
    check_passed INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE INDEX results_by_point ON results (board, model, created);
CREATE TABLE runs (
    result_id INTEGER NOT NULL REFERENCES results (id), position INTEGER NOT NULL, ms REAL NOT NULL,
    PRIMARY KEY (result_id, position)
);
CREATE TABLE coverage (
    result_id INTEGER NOT NULL REFERENCES results (id), task TEXT NOT NULL, workload TEXT NOT NULL,
    flops REAL NOT NULL, status TEXT NOT NULL CHECK (status IN ('tuned', 'fallback'))
);
CREATE TABLE comparisons (
    result_id INTEGER PRIMARY KEY REFERENCES results (id), baseline_id INTEGER NOT NULL REFERENCES results (id),
    change TEXT NOT NULL, ratio REAL NOT NULL, p_value REAL, method TEXT NOT NULL, reason TEXT NOT NULL,
    causes TEXT NOT NULL
);
PRAGMA user_version = 1;
"""


def write_version_1_database(path: Path, results: list[dict], provenance: dict) -> None:
    """A history database as the previous pipeline wrote it: the result dict with its provenance merged
    in, in a column `record`; the second result (if any) flagged against the first."""
    db = sqlite3.connect(path)
    db.executescript(VERSION_1_SCHEMA)
    for result_id, result in enumerate(results, start=1):
        record = {**result, "provenance": provenance}
        db.execute(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result_id,
                result["created"],
                result["board"],
                result["model"],
                result["timing_kind"],
                result["tvm_version"],
                json.dumps(result["target"], sort_keys=True),
                result["threads"],
                provenance["pipeline_commit"],
                provenance["record_store_version"],
                result["board_facts"]["governor"],
                result["board_facts"]["cur_freq_khz"],
                result["board_facts"]["temperature_c"],
                result["check"]["passed"],
                json.dumps(record),
            ),
        )
        db.executemany(
            "INSERT INTO runs VALUES (?, ?, ?)",
            [(result_id, position, ms) for position, ms in enumerate(result["timings"]["runs_ms"])],
        )
    if len(results) > 1:
        causes = [{"kind": "coverage_lost", "detail": "9 conv2d workloads lost their tuned schedule"}]
        db.execute(
            "INSERT INTO comparisons VALUES (2, 1, 'regression', 1.9, 0.0001, 'mann-whitney', 'samples differ', ?)",
            (json.dumps(causes),),
        )
    db.commit()
    db.close()


def test_a_database_written_by_the_previous_version_is_migrated_and_reads_typed(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    before = synthetic_result(latencies(990, 10, 0), created="2026-11-24T02:30:00Z", coverage=vgg16_coverage("tuned"))
    after = synthetic_result(latencies(1890, 10, 1), coverage=vgg16_coverage("fallback"))
    provenance = {"pipeline_commit": PROVENANCE.pipeline_commit, "record_store_version": "records-v3"}
    write_version_1_database(path, [json.loads(r.to_json()) for r in (before, after)], provenance)

    with History(path) as store:
        old, new = store.series("rk3399", "vgg16")
        assert (old.result, new.result) == (before, after)
        assert old.provenance == new.provenance == PROVENANCE
        assert (old.change, new.change) == (None, "regression")
        assert new.causes == [Cause("coverage_lost", "9 conv2d workloads lost their tuned schedule")]
        baseline = store.baseline("rk3399", "vgg16", "native")
        assert baseline is not None and baseline.id == 2
        third = store.add(synthetic_result([1.0]), PROVENANCE)
        assert [entry.id for entry in store.series("rk3399", "vgg16")] == [1, 2, third]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (4,)
    assert all("provenance" not in json.loads(text) for (text,) in db.execute("SELECT result FROM results"))


def test_a_failed_migration_leaves_the_previous_database_untouched(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    unknown = {"pipeline_commit": None, "record_store_version": None}
    write_version_1_database(path, [json.loads(synthetic_result([1.0]).to_json())], unknown)
    db = sqlite3.connect(path)
    db.execute("UPDATE results SET record = 'not JSON'")
    db.commit()
    with pytest.raises(PipelineError, match=f"history database {path}: result 1 is not JSON"):
        History(path)
    assert db.execute("PRAGMA user_version").fetchone() == (1,)
    assert db.execute("SELECT record FROM results").fetchone() == ("not JSON",)


def test_a_stored_result_of_a_newer_schema_names_the_database_and_the_result(history: History) -> None:
    result_id = history.add(synthetic_result([1.0]), PROVENANCE)
    db = sqlite3.connect(history.path)
    db.execute("UPDATE results SET result = json_set(result, '$.schema_version', 3)")
    db.commit()
    with pytest.raises(
        PipelineError, match=f"result {result_id} in history database {history.path} has result schema version 3"
    ):
        history.series("rk3399", "vgg16")


def confirmation(state: State) -> Confirmation:
    """What an A/B session of a 2x regression stored: the pairs' verdict and the state decided."""
    return Confirmation(state, f"A/B {state}", compare_pairs([1.0] * 8, [2.0] * 8))


def flagged(first: int, state: State) -> Comparison:
    verdict = compare_samples(latencies(10, 10, 0), latencies(20, 10, 1))
    return Comparison(first, verdict, [], confirmation(state))


def test_the_window_is_the_latest_nights_back_to_the_last_confirmed_change(history: History) -> None:
    """A flag A/B did not confirm stays in the window; a confirmed step starts a new level."""
    ids = [history.add(synthetic_result([1.0], created=f"2026-11-{day:02d}T02:30:00Z"), PROVENANCE) for day in (1, 2)]
    ids.append(
        history.add(synthetic_result([2.0], created="2026-11-03T02:30:00Z"), PROVENANCE, flagged(1, "confirmed"))
    )
    for day in (4, 5):
        ids.append(history.add(synthetic_result([2.0], created=f"2026-11-{day:02d}T02:30:00Z"), PROVENANCE))
    ids.append(
        history.add(synthetic_result([3.0], created="2026-11-06T02:30:00Z"), PROVENANCE, flagged(5, "not_confirmed"))
    )
    assert [e.id for e in history.window("rk3399", "vgg16", "native", 10)] == ids[2:]
    assert [e.id for e in history.window("rk3399", "vgg16", "native", 2)] == ids[4:]
    [step] = [e for e in history.series("rk3399", "vgg16") if e.id == ids[2]]
    assert step.confirmation is not None and step.confirmation.verdict is not None
    assert (step.change, step.confirmed_change, step.confirmation.verdict.ratio) == ("regression", "regression", 2.0)
    assert history.series("rk3399", "vgg16")[-1].confirmed_change is None


def test_per_task_times_are_stored_with_the_result(history: History) -> None:
    kernels = [KernelTime("fused_conv2d_add_relu", 1, 0.12), KernelTime("vm.builtin.alloc_tensor", 27, 0.005)]
    result_id = history.add(replace(synthetic_result([1.0]), kernel_times=kernels), PROVENANCE)
    assert history.kernel_times(result_id) == kernels
    assert history.kernel_times(history.add(synthetic_result([1.0]), PROVENANCE)) == []


def test_a_version_2_database_gets_the_confirmation_columns_and_its_per_task_times(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    kernels = [KernelTime("fused_conv2d_add_relu", 1, 0.12)]
    with History(path) as store:
        first = store.add(replace(synthetic_result([1.0]), kernel_times=kernels), PROVENANCE)
        verdict = compare_samples(latencies(10, 10, 0), latencies(20, 10, 1))
        second = store.add(synthetic_result([2.0]), PROVENANCE, Comparison(first, verdict, []))
    db = sqlite3.connect(path)  # back to what version 2 wrote
    db.executescript(
        "DROP TABLE kernel_times; ALTER TABLE comparisons DROP COLUMN confirmation;"
        " ALTER TABLE comparisons DROP COLUMN confirmation_detail; ALTER TABLE comparisons DROP COLUMN culprit;"
        " PRAGMA user_version = 2;"
    )
    db.close()
    with History(path) as store:
        assert store.kernel_times(first) == kernels
        [_, flag] = store.series("rk3399", "vgg16")
        assert (flag.id, flag.confirmation, flag.confirmed_change, flag.culprit) == (second, None, "regression", None)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (4,)
