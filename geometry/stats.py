"""Summary statistics for evaluation tables: mean +- std, and the median with a bootstrap CI.

The confidence interval of the median is a percentile bootstrap: ``n_boot`` (default 10,000)
resamples of the values with replacement, drawn from ``numpy.random.default_rng(seed)``; the CI
is the ((1 - level) / 2, (1 + level) / 2) percentiles (linear interpolation) of the resampled
medians. NaN values are dropped first (report the count of finite values next to the result).
In a table, say: "median [80 % CI, percentile bootstrap, 10,000 resamples, seed 0]".
"""

from __future__ import annotations

import numpy as np


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of the finite values.

    NaN mean when there is no finite value; NaN std when there are fewer than two.
    """
    v = _finite(values)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def median_ci(
    values: np.ndarray, level: float = 0.8, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, lo, hi): the median of the finite values with a percentile-bootstrap CI.

    Args:
        values: 1-D sample (NaN dropped).
        level: confidence level of the interval (paper: 0.8).
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling (same seed and values -> same interval).
    """
    if not 0 < level < 1:
        raise ValueError(f"median_ci: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"median_ci: n_boot must be >= 1, got {n_boot}")
    v = _finite(values)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // v.size)
    medians = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        medians[start:stop] = np.median(v[rng.integers(0, v.size, (stop - start, v.size))], axis=1)
    lo, hi = np.percentile(medians, [50 * (1 - level), 50 * (1 + level)])
    return float(np.median(v)), float(lo), float(hi)
