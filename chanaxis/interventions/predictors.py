"""Which channel metric predicts lesion damage (METHOD §6): per-layer Spearman, within-bin analysis, incremental R².

All correlations are Spearman(score, −damage): positive = a high score marks a channel whose loss hurts little.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from ..estimators.ranks import percentile_ranks, spearman

Z_CLIP = 0.999999


def fisher_pool(rhos, ns) -> tuple[float, int]:
    """Pooled correlation: mean of Fisher z weighted by n − 3 (groups with n ≤ 3 carry no weight)."""
    rhos, ns = np.asarray(rhos, np.float64), np.asarray(ns, np.float64)
    w = np.where(np.isfinite(rhos), np.maximum(ns - 3, 0), 0)
    if w.sum() == 0:
        return np.nan, 0
    z = np.arctanh(np.clip(np.nan_to_num(rhos), -Z_CLIP, Z_CLIP))
    return float(np.tanh((w * z).sum() / w.sum())), int((w > 0).sum())


def quantile_bins(x, n_bins: int) -> np.ndarray:
    """Bin index per unit: equal-count bins of the ranks of x (ties broken by order, so every bin fills)."""
    order = np.argsort(np.asarray(x, np.float64), kind="stable")
    out = np.empty(len(order), np.intp)
    for b, part in enumerate(np.array_split(order, n_bins)):
        out[part] = b
    return out


def within_bin(score, neg_damage, task_info, n_bins: int = 5) -> tuple[list[float], list[int]]:
    """Spearman inside each quantile bin of I(T;Y) (one layer)."""
    bins = quantile_bins(task_info, n_bins)
    rhos, ns = [], []
    for b in range(n_bins):
        sel = bins == b
        rhos.append(spearman(np.asarray(score)[sel], np.asarray(neg_damage)[sel]))
        ns.append(int(sel.sum()))
    return rhos, ns


def ols_r2(y, X) -> float:
    A = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    tss = ((y - y.mean()) ** 2).sum()
    return float(1 - (resid ** 2).sum() / tss) if tss > 0 else np.nan


def incremental_r2(y, base, extra) -> tuple[float, float, float, float]:
    """(R² base, R² base+extra, ΔR², p of the nested-model F test)."""
    y = np.asarray(y, np.float64)
    Xb, Xf = np.column_stack(base), np.column_stack(list(base) + list(extra))
    ok = np.isfinite(y) & np.isfinite(Xf).all(1)
    n, p_b, p_f = int(ok.sum()), Xb.shape[1], Xf.shape[1]
    if n <= p_f + 2:
        return np.nan, np.nan, np.nan, np.nan
    r2b, r2f = ols_r2(y[ok], Xb[ok]), ols_r2(y[ok], Xf[ok])
    df1, df2 = p_f - p_b, n - p_f - 1
    if not (np.isfinite(r2b) and np.isfinite(r2f)) or r2f >= 1:
        return r2b, r2f, r2f - r2b, np.nan
    F = ((r2f - r2b) / df1) / ((1 - r2f) / df2)
    return r2b, r2f, r2f - r2b, float(stats.f.sf(F, df1, df2))


def predictor_tables(layer, damage, scores: dict, task_info, input_capture, peer_support: dict, n_bins: int = 5):
    """All predictor tables as plain arrays: per layer × metric, pooled per metric, and the R² rows."""
    layer = np.asarray([str(v) for v in np.asarray(layer).tolist()])
    names = list(dict.fromkeys(layer))
    metrics = list(scores)
    neg = -np.asarray(damage, np.float64)
    sp = np.full((len(names), len(metrics)), np.nan)
    sp_n = np.zeros(len(names), np.int64)
    wb = np.full((len(names), len(metrics)), np.nan)
    wb_all = {m: ([], []) for m in metrics}
    for li, name in enumerate(names):
        sel = layer == name
        sp_n[li] = sel.sum()
        for mi, m in enumerate(metrics):
            s = np.asarray(scores[m], np.float64)[sel]
            sp[li, mi] = spearman(s, neg[sel])
            r, n = within_bin(s, neg[sel], np.asarray(task_info)[sel], n_bins)
            wb[li, mi] = fisher_pool(r, n)[0]
            wb_all[m][0].extend(r)
            wb_all[m][1].extend(n)
    pooled = [fisher_pool(*wb_all[m]) for m in metrics]
    # incremental R² on within-layer percentile ranks, pooled over layers and per layer
    def ranks(v):
        out = np.empty(len(layer))
        for name in names:
            sel = layer == name
            out[sel] = percentile_ranks(np.asarray(v, np.float64)[sel])
        return out
    y = ranks(np.asarray(damage, np.float64))
    base = [ranks(input_capture), ranks(task_info)]
    extra = [ranks(v) for v in peer_support.values()]
    scopes = ["pooled"] + names
    r2 = [incremental_r2(y, base, extra)]
    for name in names:
        sel = layer == name
        r2.append(incremental_r2(y[sel], [b[sel] for b in base], [e[sel] for e in extra]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sp_mean = np.nanmean(sp, axis=0) if len(names) else np.full(len(metrics), np.nan)
    return {
        "names": names, "metrics": metrics, "spearman": sp, "n_units": sp_n, "spearman_layer_mean": sp_mean,
        "within_bin": wb, "within_bin_pooled": np.array([p[0] for p in pooled]),
        "within_bin_n_bins": np.array([p[1] for p in pooled], np.int64), "r2_scopes": scopes,
        "r2": np.array(r2, np.float64),
    }
