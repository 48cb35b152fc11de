"""The history database: what goes in comes out, and an interrupted write never leaves half a record."""

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from synthetic import latencies, result_dict, vgg16_coverage

from pipeline.errors import PipelineError
from pipeline.nightly.causes import Cause
from pipeline.nightly.compare import compare_samples
from pipeline.nightly.history import Comparison, History, Provenance, pipeline_commit
from pipeline.paths import ROOT

PROVENANCE = Provenance(pipeline_commit="c0ffee" * 6 + "abcd", record_store_version="records-v3")


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite") as store:
        yield store


def test_a_result_round_trips_with_runs_coverage_provenance_and_verdict(history: History) -> None:
    baseline = result_dict(latencies(990, 10, 0), created="2026-11-24T02:30:00Z", coverage=vgg16_coverage("tuned"))
    first = history.add(baseline, PROVENANCE)
    current = result_dict(latencies(1890, 10, 1), coverage=vgg16_coverage("fallback"))
    verdict = compare_samples(baseline["timings"]["runs_ms"], current["timings"]["runs_ms"])
    cause = Cause("coverage_lost", "9 conv2d workloads lost their tuned schedule")
    second = history.add(current, PROVENANCE, Comparison(first, verdict, [cause]))

    old, new = history.series("rk3399", "vgg16")
    assert (old.id, new.id) == (first, second)
    assert new.runs_ms == current["timings"]["runs_ms"]
    assert new.record["coverage"] == current["coverage"]
    assert new.record["board_facts"]["governor"] == "performance"
    assert new.record["provenance"] == {
        "pipeline_commit": PROVENANCE.pipeline_commit,
        "record_store_version": "records-v3",
    }
    assert (old.change, new.change) == (None, "regression")
    assert new.causes == [cause]
    assert history.points() == [("rk3399", "vgg16")]


def test_the_baseline_is_the_latest_earlier_result_whose_output_was_right(history: History) -> None:
    good = history.add(result_dict([1.0], created="2026-11-23T02:30:00Z"), PROVENANCE)
    history.add(result_dict([1.0], created="2026-11-24T02:30:00Z", passed=False), PROVENANCE)
    history.add(result_dict([1.0], created="2026-11-24T02:30:00Z", model="tiny"), PROVENANCE)
    baseline = history.baseline("rk3399", "vgg16", "native")
    assert baseline is not None and baseline.id == good
    assert history.baseline("rk3399", "vgg16", "emulated") is None


def test_a_write_that_fails_half_way_leaves_nothing_of_itself_and_keeps_the_rest(history: History) -> None:
    kept = history.add(result_dict([1.0, 2.0]), PROVENANCE)
    broken = result_dict([1.0, 2.0])
    broken["timings"]["runs_ms"].append("not a number")  # fails after the result row is inserted
    with pytest.raises(ValueError):
        history.add(broken, PROVENANCE)
    assert [entry.id for entry in history.series("rk3399", "vgg16")] == [kept]
    orphans = sqlite3.connect(history.path).execute("SELECT COUNT(*) FROM runs WHERE result_id != ?", (kept,))
    assert orphans.fetchone()[0] == 0


WRITER = """
import sys
from collections.abc import Iterator
from pathlib import Path
from pipeline.nightly.history import History, Provenance
from synthetic import latencies, result_dict, vgg16_coverage
with History(Path(sys.argv[1])) as store:
    for i in range(100000):
        store.add(result_dict(latencies(10, 500, i), coverage=vgg16_coverage("tuned")), Provenance(None, None))
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
        assert all(len(entry.runs_ms) == 500 and len(entry.record["coverage"]) == 12 for entry in entries)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_database_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    sqlite3.connect(path).execute("PRAGMA user_version = 99")
    with pytest.raises(PipelineError, match="schema version 99"):
        History(path)


def test_the_pipeline_commit_is_this_checkouts_head() -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit = pipeline_commit()
    assert commit is not None and commit.startswith(head)
