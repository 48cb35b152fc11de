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


# A/B confirmation: the baseline's build and the current one run interleaved on the board in one session,
# so the machine's state of the moment hits both sides of every pair alike (Pinpoint's approach).
PAIRED_ALPHA = 0.01
PAIRED_CI_COVERAGE = 0.95

ConfirmState = Literal["confirmed", "not_confirmed", "inconclusive"]


@dataclass(frozen=True)
class PairedVerdict:
    """The decision on A/B pairs. `ratio` is the median of the per-pair ratios current / baseline and
    `ci` its distribution-free interval; `p_value` is the two-sided Wilcoxon signed-rank test on the
    log ratios. `change` is the direction the pairs show (unchanged when not confirmed)."""

    state: ConfirmState
    change: Literal["regression", "improvement", "unchanged"]
    ratio: float
    ci: tuple[float, float]
    p_value: float
    pairs: int
    reason: str


def compare_pairs(
    baseline_ms: Sequence[float],
    current_ms: Sequence[float],
    factor: float = DEFAULT_FACTOR,
    alpha: float = PAIRED_ALPHA,
    coverage: float = PAIRED_CI_COVERAGE,
    final: bool = False,
) -> PairedVerdict:
    """Decide on interleaved samples (pair i = baseline_ms[i], current_ms[i]). Confirmed: the ratios
    differ from 1 (p < alpha) and their median is beyond the factor. Not confirmed: the whole interval
    of the median ratio lies within the factor, so whatever changed is smaller than an alarm. Anything
    else is inconclusive: more pairs narrow the interval. On the `final` pairs (the budget is spent), a
    median ratio within the factor is not confirmed too: on a noisy board the interval may never get
    narrower than the factor, and two builds of the same code can differ by a few percent (code layout)."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    base = np.asarray(baseline_ms, dtype=np.float64)
    cur = np.asarray(current_ms, dtype=np.float64)
    if base.size != cur.size or base.size == 0:
        raise ValueError(f"need equally many samples on both sides, got {base.size} and {cur.size}")
    ratios = cur / base
    logs = np.log(ratios)
    ratio = float(np.exp(np.median(logs)))
    ci = median_ci(ratios.tolist(), coverage)
    p = 1.0 if not np.any(logs) else float(sps.wilcoxon(logs, alternative="two-sided").pvalue)
    n = int(base.size)
    interval = f"{coverage:.0%} CI {ci[0]:.3f}-{ci[1]:.3f}" if math.isfinite(ci[0]) else "no interval yet"
    detail = f"x{ratio:.3f} over {n} pairs ({interval}, p={p:.2g})"

    def verdict(state: ConfirmState, change: Literal["regression", "improvement", "unchanged"]) -> PairedVerdict:
        return PairedVerdict(state, change, ratio, ci, p, n, detail)

    if p < alpha and ratio > factor:
        return verdict("confirmed", "regression")
    if p < alpha and ratio < 1 / factor:
        return verdict("confirmed", "improvement")
    if ci[0] > 1 / factor and ci[1] < factor:
        return verdict("not_confirmed", "unchanged")
    if final and 1 / factor < ratio < factor:
        found = "no difference found" if ci[0] <= 1 <= ci[1] else f"a difference within x{factor:g}"
        return PairedVerdict("not_confirmed", "unchanged", ratio, ci, p, n, f"{found}: {detail}")
    return verdict("inconclusive", "unchanged")


# History-aware detection: a point is judged against its recent nights, not against one night.
DEFAULT_WINDOW = 5


@dataclass(frozen=True)
class WindowVerdict:
    """`verdict` compares tonight's runs with the window's pooled runs, its ratio taken against the
    window's level (the median of the nights' medians); `reference` indexes the night nearest that
    level, the build an A/B confirmation runs against."""

    verdict: Verdict
    reference: int
    level_ms: float


def compare_window(
    window_ms: Sequence[Sequence[float]], current_ms: Sequence[float], factor: float = DEFAULT_FACTOR
) -> WindowVerdict:
    """Verdict on `current_ms` against several earlier nights (oldest first). The level is the median of
    the nights' medians, so one odd night neither raises nor hides an alarm; a slow creep adds up against
    it night after night until it passes the factor. The samples must also differ (compare_samples on the
    pooled runs), so a level that moves within the nights' own spread is not flagged."""
    if not window_ms:
        raise ValueError("the window needs at least one earlier night")
    medians = np.array([float(np.median(np.asarray(night, dtype=np.float64))) for night in window_ms])
    level = float(np.median(medians))
    reference = int(np.argmin(np.abs(medians - level)))
    pooled = [float(ms) for night in window_ms for ms in night]
    pooled_verdict = compare_samples(pooled, current_ms, factor=1.0)  # do they differ at all?
    cur_median = float(np.median(np.asarray(current_ms, dtype=np.float64)))
    ratio = cur_median / level
    change = _by_factor(ratio, factor) if pooled_verdict.flagged else pooled_verdict.change
    nights = len(window_ms)
    reason = pooled_verdict.reason + (f", against the median of {nights} nights" if nights > 1 else "")
    verdict = Verdict(
        change,
        ratio,
        pooled_verdict.p_value,
        pooled_verdict.method,
        level,
        cur_median,
        len(pooled),
        len(current_ms),
        reason,
    )
    return WindowVerdict(verdict, reference, level)
