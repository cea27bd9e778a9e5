"""MACs-matched comparison of pruning curves (METHOD §7) and the percentile bootstrap of paired differences."""
from __future__ import annotations

import numpy as np
from scipy import stats


def as_curve(reduction, acc) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by MACs reduction (duplicates averaged), so the curve is a function of the reduction."""
    x, y = np.asarray(reduction, np.float64), np.asarray(acc, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.bincount(inv, weights=y) / np.bincount(inv)
    return ux, uy


def common_interval(curves) -> tuple[float, float]:
    """The MACs-reduction interval every curve covers: [max of the minima, min of the maxima]."""
    pts = [as_curve(*c)[0] for c in curves]
    pts = [p for p in pts if p.size]
    if not pts:
        return np.nan, np.nan
    return float(max(p[0] for p in pts)), float(min(p[-1] for p in pts))


def mean_over(reduction, acc, lo: float, hi: float) -> float:
    """Mean accuracy over [lo, hi] of the piecewise-linear curve through the points (exact trapezoid).

    A zero-width interval gives the interpolated accuracy at that point; outside the curve's range, NaN."""
    x, y = as_curve(reduction, acc)
    if x.size == 0 or not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or lo < x[0] - 1e-12 or hi > x[-1] + 1e-12:
        return np.nan
    if hi - lo <= 1e-12:
        return float(np.interp(lo, x, y))
    grid = np.unique(np.concatenate([[lo, hi], x[(x > lo) & (x < hi)]]))
    return float(np.trapezoid(np.interp(grid, x, y), grid) / (hi - lo))


def auc_weights(reduction, lo: float, hi: float) -> np.ndarray:
    """The weight of each point's accuracy in `mean_over(reduction, acc, lo, hi)`, which is linear in `acc` once the
    MACs reductions and the interval are fixed: Σ weights · acc equals it for any finite `acc` (NaN weights where
    `mean_over` gives NaN). The image bootstrap recomputes resampled AUCs through these."""
    x = np.asarray(reduction, np.float64)
    eye = np.eye(x.size)
    return np.array([mean_over(x, eye[i], lo, hi) for i in range(x.size)])


def auc(curves: dict, interval=None) -> tuple[dict, tuple[float, float]]:
    """`auc` per curve: mean accuracy (%) over the MACs-reduction interval every curve covers."""
    lo, hi = interval if interval is not None else common_interval(curves.values())
    return {k: mean_over(*c, lo, hi) for k, c in curves.items()}, (lo, hi)


def bootstrap_ci(diffs, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0):
    """(mean, low, high): percentile bootstrap CI of the mean paired difference, resampling seeds."""
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan, np.nan, np.nan
    if d.size == 1 or np.ptp(d) == 0:
        return float(d.mean()), float(d.mean()), float(d.mean())
    res = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)
