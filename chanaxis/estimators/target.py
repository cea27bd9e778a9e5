"""Target axis, METHOD §3: task information, pair information, MMI redundancy and target-excess synergy (nats)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .ranks import top_by_abs

from .stats import RHO_MAX, Moments, gaussian_mi

RIDGE = 1e-10
# The pair/triplet R² of T is capped like a single ρ², so a clipped, slightly indefinite matrix cannot give +inf.
I_MAX = float(gaussian_mi(RHO_MAX))


def task_info(rho_yt, rho_max: float = RHO_MAX) -> np.ndarray:
    """I(T;Y_i) = max(0, −½ log(1 − ρ_iT²))."""
    return np.maximum(gaussian_mi(rho_yt, rho_max), 0.0)


def pairwise_mi(rho_yy, rho_max: float = RHO_MAX) -> np.ndarray:
    """I(Y_i;Y_j) = −½ log(1 − ρ_ij²); the diagonal (self) is set to 0."""
    mi = gaussian_mi(rho_yy, rho_max)
    if mi.ndim == 2 and mi.shape[0] == mi.shape[1]:
        np.fill_diagonal(mi, 0.0)
    return mi


def _log_ratio(num, den):
    """½ log(num/den) clipped to [0, I_MAX]; den ≤ 0 only from a clipped, indefinite matrix."""
    num = np.maximum(num, 1e-300)
    return np.clip(0.5 * np.log(num / np.maximum(den, num * np.exp(-2.0 * I_MAX))), 0.0, I_MAX)


def pair_info(cov3, ridge: float = RIDGE) -> np.ndarray:
    """I(T;Y_i,Y_j) = ½ log(σ_T² det Σ_YY / det Σ_TYY) from 3×3 covariances of (T, Y_i, Y_j), shape (..., 3, 3)."""
    S = np.asarray(cov3, np.float64) + ridge * np.eye(3)
    t, a, b = S[..., 0, 0], S[..., 0, 1], S[..., 0, 2]
    yi, yj, c = S[..., 1, 1], S[..., 2, 2], S[..., 1, 2]
    det_yy = yi * yj - c * c
    det_tyy = t * det_yy - a * (a * yj - c * b) + b * (a * c - yi * b)
    return _log_ratio(t * det_yy, det_tyy)


def _pair_info_rho(a, b, c, ridge: float = RIDGE):
    """pair_info on the standardised 3×3 [[1,a,b],[a,1,c],[b,c,1]]: same value, no scale dependence of the ridge."""
    u = 1.0 + ridge
    det_yy = u * u - c * c
    det_tyy = u * det_yy - a * (a * u - c * b) + b * (a * c - u * b)
    return _log_ratio(u * det_yy, det_tyy)


def pair_info_all(m: Moments, pairs, ridge: float = RIDGE, rho_max: float = RHO_MAX,
                  rho_yy=None, rho_yt=None) -> np.ndarray:
    """I(T;Y_i,Y_j) for an (P, 2) array of channel pairs, from the clipped correlations of m."""
    ryy = m.rho_yy(rho_max) if rho_yy is None else rho_yy
    ryt = m.rho_yt(rho_max) if rho_yt is None else rho_yt
    pairs = np.asarray(pairs, np.intp).reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]
    return _pair_info_rho(ryt[i], ryt[j], ryy[i, j], ridge)


def triple_info(m: Moments, triplets, ridge: float = RIDGE, rho_max: float = RHO_MAX,
                rho_yy=None, rho_yt=None) -> np.ndarray:
    """I(T;Y_i,Y_j,Y_k) = ½ log(σ_T² det Σ_YYY / det Σ_TYYY) (4×4 log-det), (P, 3) triplets."""
    ryy = m.rho_yy(rho_max) if rho_yy is None else rho_yy
    ryt = m.rho_yt(rho_max) if rho_yt is None else rho_yt
    tr = np.asarray(triplets, np.intp).reshape(-1, 3)
    R = np.empty((len(tr), 4, 4))
    R[:, 0, 0] = 1.0
    R[:, 0, 1:] = R[:, 1:, 0] = ryt[tr]
    R[:, 1:, 1:] = ryy[tr[:, :, None], tr[:, None, :]]
    R += ridge * np.eye(4)
    s_yyy, ld_yyy = np.linalg.slogdet(R[:, 1:, 1:])
    s_all, ld_all = np.linalg.slogdet(R)
    ok = (s_yyy > 0) & (s_all > 0)
    val = 0.5 * (np.log1p(ridge) + ld_yyy - np.where(ok, ld_all, 0.0))
    # a non-positive det only arises from clipping an (almost) singular matrix: treat as T fully explained
    return np.where(ok, np.clip(val, 0.0, I_MAX), I_MAX)


class TargetPairs(NamedTuple):
    task_info: np.ndarray  # (C,) I(T;Y_i)
    synergy: np.ndarray  # (C,) mean of the n_top_syn largest Syn among the candidates
    redundancy_t: np.ndarray  # (C,) mean RedT over the candidates
    unique_t: np.ndarray  # (C,) max(0, I(T;Y_i) − redundancy_t)
    candidates: np.ndarray  # (C, K) peer indices, by decreasing pairwise MI
    syn: np.ndarray  # (C, K) Syn(i, candidates[i, k])
    red: np.ndarray  # (C, K) RedT(i, candidates[i, k])
    syn_partners: np.ndarray  # (C, n_top_syn) candidates with the largest Syn, decreasing


def target_pairs(m: Moments, n_candidates: int = 50, n_top_syn: int = 10, ridge: float = RIDGE,
                 rho_max: float = RHO_MAX) -> TargetPairs:
    """Per-channel MMI summaries over each channel's top-n_candidates peers by pairwise Gaussian MI."""
    ryy, ryt = m.rho_yy(rho_max), m.rho_yt(rho_max)
    n = ryy.shape[0]
    ti = task_info(ryt, rho_max)
    K = min(n_candidates, n - 1)
    k_syn = min(n_top_syn, K)
    if K <= 0:
        z, e = np.zeros(n), np.zeros((n, 0))
        return TargetPairs(ti, z, z.copy(), ti.copy(), e.astype(np.intp), e, e, e.astype(np.intp))
    cand = top_by_abs(ryy, K)  # MI is monotone in |ρ|, and |ρ| has no log to saturate ties
    i = np.broadcast_to(np.arange(n)[:, None], cand.shape)
    ip = _pair_info_rho(ryt[i], ryt[cand], ryy[i, cand], ridge)
    ti_i, ti_j = ti[i], ti[cand]
    syn = ip - np.maximum(ti_i, ti_j)
    red = np.minimum(ti_i, ti_j)
    top = np.argsort(-syn, axis=1, kind="stable")[:, :k_syn]
    synergy = np.take_along_axis(syn, top, 1).mean(1)
    redundancy = red.mean(1)
    return TargetPairs(ti, synergy, redundancy, np.maximum(0.0, ti - redundancy), cand, syn, red,
                       np.take_along_axis(cand, top, 1))
