"""The bisection's search (pipeline/upgrade/bisect.py) with a fake comparison: it names the first slower
commit, says so when the bad end is not slower, and leaves undecided what a budget or a comparison that
cannot tell stops it from deciding, never guessing."""

from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic import latencies, synthetic_result

from pipeline.deploy.results import DeployResult
from pipeline.nightly.confirm import Confirmation
from pipeline.nightly.history import History
from pipeline.nightly.loop import Matrix, MatrixEntry, NightlyOutcome, Point, run_nightly
from pipeline.nightly.provenance import RunProvenance
from pipeline.nightly.report import point_line
from pipeline.stats import compare_pairs
from pipeline.upgrade.bisect import Budget, Measurement, State, bisect

COMMITS = [f"c{i}" for i in range(1, 10)]  # c1 .. c9, the bad end last


def fake(first_slower: int | None, unclear: set[str] = frozenset(), seconds: float = 1.0):  # type: ignore[assignment]
    """Commits from index `first_slower` on are 1.5x slower; the `unclear` ones cannot be told."""
    asked: list[str] = []

    def compare(commit: str) -> Measurement:
        asked.append(commit)
        slower = first_slower is not None and COMMITS.index(commit) >= first_slower
        state: State = "inconclusive" if commit in unclear else ("slower" if slower else "not_slower")
        return Measurement(commit, state, 1.5 if slower else 1.0, "fake", seconds)

    return compare, asked


@pytest.mark.parametrize("culprit", range(len(COMMITS)))
def test_names_the_first_slower_commit_in_a_logarithmic_number_of_steps(culprit: int) -> None:
    compare, asked = fake(culprit)
    found = bisect(COMMITS, compare)
    assert found.culprit == COMMITS[culprit]
    assert asked[0] == "c9"  # the bad end is confirmed slower first
    assert len(asked) <= 1 + 4  # ceil(log2(9)) midpoints after it
    assert found.undecided == ()


def test_a_bad_end_that_is_not_slower_is_no_culprit() -> None:
    compare, asked = fake(None)
    found = bisect(COMMITS, compare)
    assert (found.culprit, found.first_slower, found.no_regression) == (None, None, True)
    assert asked == ["c9"]
    assert "not slower" in found.reason


def test_a_comparison_that_cannot_tell_leaves_its_range_undecided() -> None:
    compare, _ = fake(6, unclear={"c4"})  # c7 is the culprit, c4 (the first midpoint) cannot be told
    found = bisect(COMMITS, compare)
    assert found.culprit is None and not found.no_regression
    assert found.first_slower == "c9" and found.last_not_slower is None
    assert found.undecided == tuple(COMMITS[:8])
    assert "cannot tell whether c4" in found.reason


def test_a_spent_board_budget_stops_with_the_narrowed_range() -> None:
    compare, asked = fake(6, seconds=10.0)
    found = bisect(COMMITS, compare, Budget(builds=20, board_seconds=25.0))
    assert asked == ["c9", "c4", "c6"]  # 30 s spent before the fourth
    assert found.culprit is None
    assert (found.last_not_slower, found.first_slower) == ("c6", "c9")
    assert found.undecided == ("c7", "c8")
    assert "board-time budget" in found.reason


def test_a_spent_build_budget_stops_too() -> None:
    compare, asked = fake(0)
    found = bisect(COMMITS, compare, Budget(builds=3))
    assert asked == ["c9", "c4"] and found.culprit is None
    assert found.undecided == ("c1", "c2", "c3")
    assert "build budget" in found.reason


def test_builds_needed_counts_both_ends_and_the_midpoints() -> None:
    assert [Budget().builds_needed(n) for n in (1, 2, 3, 8, 9)] == [2, 3, 4, 5, 6]


def test_the_nightly_bisects_a_confirmed_regression_whose_pipeline_commit_changed(tmp_path: Path) -> None:
    """Stand-ins for the deploy, the A/B session and the bisection: the loop calls the bisection with the
    baseline's and tonight's commits, and the summary line and the history carry its answer."""
    matrix = Matrix(matrix=[MatrixEntry(boards=["rk3399"], models=["vgg16"], runs=20)])
    asked: list[tuple[str, str, str]] = []

    def deploy(median_ms: float, key: str) -> Callable[[Point], DeployResult]:
        def run(point: Point) -> DeployResult:
            runs = latencies(median_ms, 20, len(asked) + int(median_ms))
            return synthetic_result(runs, board=point.board, model=point.model, build_key=key.ljust(16, "0"))

        return run

    def confirm(point: Point, baseline: DeployResult, current: DeployResult) -> Confirmation:
        verdict = compare_pairs(baseline.timings.runs_ms, current.timings.runs_ms, final=True)
        return Confirmation(verdict.state, f"A/B {verdict.state}", verdict)

    def bisect_point(point: Point, good: str, bad: str) -> str:
        asked.append((point.name, good, bad))
        return f"culprit: {bad[:12]} default schedules: no register tile (x1.90 against {good[:12]})"

    def night(median_ms: float, key: str, commit: str) -> NightlyOutcome:
        provenance = RunProvenance(pipeline_commit=commit, record_store_version=None)
        return run_nightly(
            matrix, deploy(median_ms, key), store, provenance, confirm=confirm, lock_dir=tmp_path, bisect=bisect_point
        )

    with History(tmp_path / "history.sqlite") as store:
        night(10.0, "a", "good")
        same_commit = night(19.0, "b", "good")  # slower, but the pipeline did not change: nothing to bisect
        assert same_commit.exit_code == 1 and asked == [] and same_commit.outcomes[0].culprit is None
        night(10.0, "a", "good")
        slower = night(19.0, "c", "bad-dirty")
        stored = store.series("rk3399", "vgg16")
    assert [entry.culprit for entry in stored] == [None, None, None, slower.outcomes[0].culprit]
    assert asked == [("rk3399/vgg16", "good", "bad")]
    assert slower.outcomes[0].culprit == "culprit: bad default schedules: no register tile (x1.90 against good)"
    assert point_line(slower.outcomes[0]).endswith(
        "; bisect: culprit: bad default schedules: no register tile (x1.90 against good)"
    )
