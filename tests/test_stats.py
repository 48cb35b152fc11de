"""The comparison rule on synthetic per-run samples: quiet on noise, loud on a real shift, and honest
when there are too few runs to tell."""

import numpy as np
import pytest
from synthetic import latencies

from pipeline.nightly.compare import compare_samples, median_ci, min_p_value


def test_identical_distributions_rarely_raise_an_alarm() -> None:
    """Without the factor, the test alone: false alarms near its p < 0.002 level over many seeds."""
    seeds = range(500)
    differing = [
        compare_samples(latencies(10.0, 20, 2 * s), latencies(10.0, 20, 2 * s + 1), factor=1.0).change for s in seeds
    ]
    assert sum(change != "unchanged" for change in differing) <= 5


def test_identical_distributions_are_never_flagged_with_the_default_factor() -> None:
    verdicts = [compare_samples(latencies(10.0, 20, 2 * s), latencies(10.0, 20, 2 * s + 1)) for s in range(200)]
    assert not any(verdict.flagged for verdict in verdicts)


@pytest.mark.parametrize(("shift", "change"), [(1.10, "regression"), (0.90, "improvement")])
def test_a_ten_percent_shift_with_twenty_runs_is_flagged(shift: float, change: str) -> None:
    for seed in range(50):
        verdict = compare_samples(latencies(10.0, 20, 2 * seed), latencies(10.0 * shift, 20, 2 * seed + 1))
        assert verdict.change == change
        assert verdict.method == "mann-whitney"
        assert verdict.p_value is not None and verdict.p_value < 0.002
        assert verdict.ratio == pytest.approx(shift, rel=0.03)


def test_a_real_shift_below_the_factor_is_not_flagged() -> None:
    verdict = compare_samples(latencies(10.0, 20, 0, spread=0.002), latencies(10.2, 20, 1, spread=0.002), factor=1.05)
    assert verdict.p_value is not None and verdict.p_value < 0.002
    assert verdict.change == "unchanged"


def test_the_test_is_used_only_where_its_p_value_is_reachable() -> None:
    assert min_p_value(6, 6) > 0.002 > min_p_value(7, 7)
    assert compare_samples(latencies(10, 7, 0), latencies(20, 7, 1)).method == "mann-whitney"
    assert compare_samples(latencies(10, 6, 0), latencies(20, 6, 1)).method == "median-ci"


def test_three_runs_a_side_fall_back_and_say_they_cannot_tell() -> None:
    """The user's 990 ms -> 1892 ms with three runs each: a 1.9x ratio, but no evidence a rule could trust."""
    verdict = compare_samples([989.2, 990.0, 990.9], [1890.1, 1892.3, 1894.4])
    assert verdict.method == "median-ci"
    assert verdict.change == "inconclusive"
    assert verdict.ratio == pytest.approx(1.91, abs=0.01)
    assert "too few runs" in verdict.reason


def test_non_overlapping_median_intervals_decide_where_the_test_cannot() -> None:
    """With a stricter p threshold, 8 runs a side cannot reach it: the 99% intervals decide instead."""
    baseline, slower = latencies(10.0, 8, 0), latencies(13.0, 8, 1)
    verdict = compare_samples(baseline, slower, p_threshold=1e-4)
    assert (verdict.method, verdict.change, verdict.p_value) == ("median-ci", "regression", None)
    same = compare_samples(baseline, latencies(10.0, 8, 2), p_threshold=1e-4)
    assert (same.method, same.change) == ("median-ci", "unchanged")


def test_the_median_interval_holds_the_true_median_at_least_99_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    trials = 2000
    covered = 0
    for _ in range(trials):
        low, high = median_ci(rng.exponential(1.0, 20))
        covered += low <= np.log(2) <= high
    assert covered / trials >= 0.985


def test_an_interval_needs_eight_runs() -> None:
    assert median_ci(range(7)) == (-np.inf, np.inf)
    assert median_ci(range(8)) == (0.0, 7.0)
