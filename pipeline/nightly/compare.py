"""Is a point's latency different from its baseline's? Decided on the per-run samples, never on two means.

The rule is asv's: a two-sided Mann-Whitney U test at p < 0.002, used only when that p-value is
reachable at the two sample sizes; otherwise the samples differ only if the 99% confidence intervals
of their medians (order-statistic bounds, no distribution assumed) do not overlap. A difference is
flagged only if the ratio of the medians also passes a factor, so a real but tiny shift is not an alarm.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

P_THRESHOLD = 0.002
CI_COVERAGE = 0.99
DEFAULT_FACTOR = 1.05
EXACT_MAX_SAMPLES = 20

Change = Literal["regression", "improvement", "unchanged", "inconclusive"]
Method = Literal["mann-whitney", "median-ci"]


@dataclass(frozen=True)
class Verdict:
    """`ratio` is current median / baseline median (above 1 = slower). `p_value` is None when the
    confidence-interval fallback decided; `inconclusive` means too few runs to tell either way."""

    change: Change
    ratio: float
    p_value: float | None
    method: Method
    baseline_median_ms: float
    current_median_ms: float
    baseline_runs: int
    current_runs: int
    reason: str

    @property
    def flagged(self) -> bool:
        return self.change in ("regression", "improvement")


def min_p_value(n: int, m: int) -> float:
    """Smallest two-sided Mann-Whitney p-value possible with samples of n and m: every value of one
    sample below every value of the other."""
    return min(1.0, 2.0 / math.comb(n + m, min(n, m)))


def median_ci(samples: Sequence[float], coverage: float = CI_COVERAGE) -> tuple[float, float]:
    """Distribution-free interval [x_(l), x_(n+1-l)] holding the median with at least `coverage`
    probability (the rank of the median is Binomial(n, 1/2)); unbounded when n is too small for it."""
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size
    ranks = np.arange(1, n // 2 + 1)
    usable = ranks[sps.binom.cdf(ranks - 1, n, 0.5) <= (1 - coverage) / 2]
    if usable.size == 0:
        return (-math.inf, math.inf)
    low = int(usable.max())
    return (float(ordered[low - 1]), float(ordered[n - low]))


def compare_samples(
    baseline_ms: Sequence[float],
    current_ms: Sequence[float],
    factor: float = DEFAULT_FACTOR,
    p_threshold: float = P_THRESHOLD,
) -> Verdict:
    """Verdict on `current_ms` against `baseline_ms` (per-run latencies of two results)."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    base = np.asarray(baseline_ms, dtype=np.float64)
    cur = np.asarray(current_ms, dtype=np.float64)
    if base.size == 0 or cur.size == 0:
        raise ValueError("both samples need at least one run")
    base_median, cur_median = float(np.median(base)), float(np.median(cur))
    ratio = cur_median / base_median

    def verdict(change: Change, p: float | None, method: Method, reason: str) -> Verdict:
        return Verdict(change, ratio, p, method, base_median, cur_median, int(base.size), int(cur.size), reason)

    if min_p_value(base.size, cur.size) < p_threshold:
        exact = max(base.size, cur.size) <= EXACT_MAX_SAMPLES and np.unique(np.concatenate([base, cur])).size == (
            base.size + cur.size
        )
        p = float(
            sps.mannwhitneyu(cur, base, alternative="two-sided", method="exact" if exact else "asymptotic").pvalue
        )
        if p >= p_threshold:
            return verdict("unchanged", p, "mann-whitney", f"samples not distinguishable (p={p:.2g})")
        return verdict(_by_factor(ratio, factor), p, "mann-whitney", f"samples differ (p={p:.2g})")

    base_ci, cur_ci = median_ci(base.tolist()), median_ci(cur.tolist())
    if math.isinf(base_ci[0]) or math.isinf(cur_ci[0]):
        needed = _runs_for_ci()
        return verdict(
            "inconclusive",
            None,
            "median-ci",
            f"too few runs to tell ({base.size} and {cur.size}; each needs {needed} for a 99% interval of the median)",
        )
    if base_ci[1] >= cur_ci[0] and cur_ci[1] >= base_ci[0]:
        return verdict("unchanged", None, "median-ci", "99% intervals of the medians overlap")
    return verdict(_by_factor(ratio, factor), None, "median-ci", "99% intervals of the medians do not overlap")


def _by_factor(ratio: float, factor: float) -> Change:
    """Samples that differ are only flagged when the medians moved by more than the factor."""
    if ratio > factor:
        return "regression"
    if ratio < 1 / factor:
        return "improvement"
    return "unchanged"


def _runs_for_ci(coverage: float = CI_COVERAGE) -> int:
    """Fewest runs whose extreme order statistics already bound the median at `coverage`."""
    return math.ceil(math.log2(2 / (1 - coverage)))
