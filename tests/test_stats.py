"""The comparison rule on synthetic per-run samples: quiet on noise, loud on a real shift, and honest
when there are too few runs to tell."""

import numpy as np
import pytest
from synthetic import latencies

from pipeline.stats import (
    DEFAULT_WINDOW,
    compare_pairs,
    compare_samples,
    compare_window,
    median_ci,
    min_p_value,
)


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


def paired(seed: int, pairs: int, shift: float, jitter: float = 0.01) -> tuple[list[float], list[float]]:
    """A/B pairs on a machine whose speed swings by up to 2x between pairs (both sides of a pair share
    it), with a small jitter inside each pair and the current side slower by `shift`."""
    rng = np.random.default_rng(seed)
    machine = 10.0 * np.exp(rng.uniform(np.log(0.7), np.log(1.4), pairs))
    base = machine * np.exp(rng.normal(0, jitter, pairs))
    cur = machine * shift * np.exp(rng.normal(0, jitter, pairs))
    return base.tolist(), cur.tolist()


def test_pairs_on_a_swinging_machine_do_not_confirm_an_unchanged_build() -> None:
    """The machine's swings would fool a comparison of two nights; within pairs they cancel."""
    verdicts = [compare_pairs(*paired(seed, 12, 1.0)) for seed in range(200)]
    assert sum(v.state == "confirmed" for v in verdicts) <= 2
    assert sum(v.state == "not_confirmed" for v in verdicts) >= 190


@pytest.mark.parametrize(("shift", "change"), [(1.10, "regression"), (0.90, "improvement")])
def test_a_ten_percent_change_is_confirmed_by_eight_pairs(shift: float, change: str) -> None:
    for seed in range(100):
        verdict = compare_pairs(*paired(seed, 8, shift))
        assert (verdict.state, verdict.change) == ("confirmed", change)
        assert verdict.ratio == pytest.approx(shift, rel=0.02)
        assert verdict.p_value < 0.01


def test_pairs_too_noisy_to_tell_are_inconclusive_not_noise() -> None:
    verdict = compare_pairs(*paired(3, 8, 1.06, jitter=0.08))
    assert verdict.state == "inconclusive"
    assert "over 8 pairs" in verdict.reason


def test_a_change_smaller_than_the_factor_is_not_confirmed() -> None:
    verdict = compare_pairs(*paired(5, 12, 1.02, jitter=0.003))
    assert verdict.p_value < 0.01
    assert (verdict.state, verdict.change) == ("not_confirmed", "unchanged")


def nights(medians: list[float], runs: int = 20) -> list[list[float]]:
    return [latencies(median, runs, seed) for seed, median in enumerate(medians)]


def test_a_slow_creep_under_the_factor_each_night_is_found_against_the_window() -> None:
    """+3% a night: each night against the one before is unchanged, against the last five it is not."""
    creep = [10.0 * 1.03**night for night in range(6)]
    *window, tonight = nights(creep)
    assert compare_samples(window[-1], tonight).change == "unchanged"
    found = compare_window(window[-DEFAULT_WINDOW:], tonight)
    assert found.verdict.change == "regression"
    assert found.verdict.ratio == pytest.approx(1.03**3, rel=0.02)
    assert found.reference == 2  # the night at the window's level: the build an A/B runs against


def test_a_one_night_spike_is_not_a_step() -> None:
    *window, tonight = nights([10.0, 10.0, 10.0, 10.0, 19.0, 10.0])
    assert compare_samples(window[-1], tonight).change == "improvement"  # one night back: a false alarm
    verdict = compare_window(window, tonight).verdict
    assert verdict.change == "unchanged"
    assert verdict.baseline_median_ms == pytest.approx(10.0, rel=0.02)


def test_a_step_is_flagged_the_night_it_happens() -> None:
    *window, tonight = nights([10.0, 10.1, 9.9, 10.0, 13.0])
    assert compare_window(window, tonight).verdict.change == "regression"


def test_when_the_budget_is_spent_no_difference_found_is_noise() -> None:
    """On a board too noisy for an interval narrower than the factor, the last pairs still decide."""
    base, cur = paired(11, 24, 1.0, jitter=0.08)
    assert compare_pairs(base, cur).state == "inconclusive"
    verdict = compare_pairs(base, cur, final=True)
    assert verdict.state == "not_confirmed" and verdict.reason.startswith("no difference found")
    assert compare_pairs(*paired(4, 24, 1.12, jitter=0.08), final=True).state != "not_confirmed"


def test_when_the_budget_is_spent_a_real_difference_within_the_factor_is_no_alarm() -> None:
    """Two builds of the same code differ by a few percent (code layout): when the pairs resolve that,
    but not whether it is past the factor, the last pairs call it within the factor, not an alarm."""
    base, cur = paired(2, 10, 1.3, jitter=0.15)
    early = compare_pairs(base, cur, factor=1.5)
    assert early.state == "inconclusive" and early.ci[0] > 1 and early.ci[1] > 1.5
    verdict = compare_pairs(base, cur, factor=1.5, final=True)
    assert verdict.state == "not_confirmed" and verdict.reason.startswith("a difference within x1.5")
