"""Steady-state statistics of per-run latencies, in the spirit of TFLite's benchmark_model."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimingStats:
    count: int
    mean_ms: float
    std_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p99_ms: float


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Sample standard deviation (ddof=1) so a handful of emulated runs is not reported as noiseless."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no timed runs to summarize")
    std = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return TimingStats(
        count=int(samples.size),
        mean_ms=float(samples.mean()),
        std_ms=std,
        median_ms=float(p50),
        min_ms=float(samples.min()),
        max_ms=float(samples.max()),
        p90_ms=float(p90),
        p99_ms=float(p99),
    )
