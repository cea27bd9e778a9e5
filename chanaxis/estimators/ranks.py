"""Ranks and rank correlations: the one home of percentile ranks, Spearman ρ and top-k-by-|ρ| peer selection."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def percentile_ranks(x) -> np.ndarray:
    """Average-tie ranks scaled to (0, 1] over the finite values; NaN stays NaN."""
    x = np.asarray(x, np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.any():
        out[ok] = stats.rankdata(x[ok]) / ok.sum()
    return out


def spearman(a, b) -> float:
    """Spearman ρ over the pairs where both are finite; NaN when fewer than 3 such pairs or one side is constant
    (ρ is undefined there, and saying so beats a number)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a[ok], b[ok]).statistic)


def top_by_abs(R, k: int) -> np.ndarray:
    """For each row i, the k columns j ≠ i of largest |R_ij|, by decreasing |R_ij|, ties to the lower index:
    the one selection of "the k peers with the largest |ρ|" (peer explanation, candidate pairs, replacement)."""
    a = np.abs(np.asarray(R, np.float64))
    n = a.shape[0]
    k = max(0, min(int(k), n - 1))
    np.fill_diagonal(a, -1.0)
    return np.argsort(-a, axis=1, kind="stable")[:, :k]
