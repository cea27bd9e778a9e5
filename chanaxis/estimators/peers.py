"""Peer explanation and compact hulls, METHOD §2.

E_i(S) = c_Sᵀ (C_SS + λI)⁻¹ c_S, the ridge R² of channel i from peers S, with C the layer's correlation matrix.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .ranks import top_by_abs

LAM = 1e-3
_TINY = 1e-15


def peer_explanation(C, i: int, S, lam: float = LAM) -> float:
    """Direct solve of E_i(S), clipped to [0, 1]."""
    C = np.asarray(C, np.float64)
    S = np.asarray(S, dtype=np.intp).reshape(-1)
    if S.size == 0:
        return 0.0
    c = C[S, i]
    M = C[np.ix_(S, S)] + lam * np.eye(S.size)
    return float(np.clip(c @ np.linalg.solve(M, c), 0.0, 1.0))


def peer_r2_full(C, lam: float = LAM) -> np.ndarray:
    """E_i(all j ≠ i) for every i from one inverse.

    With M = C + λI and P = M⁻¹, the block-inverse (Schur complement) identity gives
    1/P_ii = M_ii − m_Sᵀ M_SS⁻¹ m_S with S = all j ≠ i, and m_S = c_S off the diagonal, so
    E_i = (C_ii + λ) − 1/P_ii.
    """
    C = np.asarray(C, np.float64)
    n = C.shape[0]
    if n < 2:
        return np.zeros(n)
    M = C + lam * np.eye(n)
    P = np.linalg.inv(M)
    return np.clip(np.diag(M) - 1.0 / np.diag(P), 0.0, 1.0)


def peer_r2_topk(C, k: int = 8, lam: float = LAM) -> np.ndarray:
    """E_i(the k peers with the largest |ρ_ij|), batched over channels."""
    C = np.asarray(C, np.float64)
    n = C.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(n)
    S = top_by_abs(C, k)  # (n, k); order inside S does not change E
    c = np.take_along_axis(C.T, S, axis=1)  # c[i, s] = C[S[i, s], i]
    M = C[S[:, :, None], S[:, None, :]] + lam * np.eye(k)
    e = np.einsum("ik,ik->i", c, np.linalg.solve(M, c[..., None])[..., 0])
    return np.clip(e, 0.0, 1.0)


def _greedy_paths(M, targets, n_steps):
    """Greedy forward-selection paths for a block of targets, all peers scored at once.

    A partial Cholesky of M pivoted per target: V (B, s, C) holds L⁻¹ M[S, :]. Then the residual variance of j
    is d_j = M_jj − ‖V[:, j]‖², its residual covariance with i is r_j = M_ji − V[:, j]·V[:, i], and adding j raises
    E_i by exactly r_j² / d_j (Schur complement). Each step is O(B·s·C).
    """
    B, n = len(targets), M.shape[0]
    rows = np.arange(B)
    V = np.zeros((B, n_steps, n))
    d = np.tile(np.diag(M), (B, 1))
    r = M[targets].copy()
    taken = np.zeros((B, n), bool)
    taken[rows, targets] = True
    path = np.full((B, n_steps), -1, np.intp)
    E = np.zeros((B, n_steps))
    e = np.zeros(B)
    for s in range(n_steps):
        gain = np.where(taken, -np.inf, r * r / np.maximum(d, _TINY))
        p = gain.argmax(1)
        e = e + gain[rows, p]
        v = M[p] - (V[rows, :s, p][:, None, :] @ V[:, :s])[:, 0]
        v /= np.sqrt(np.maximum(d[rows, p], _TINY))[:, None]
        V[:, s] = v
        d -= v * v
        r -= v * v[rows, targets][:, None]
        taken[rows, p] = True
        path[:, s], E[:, s] = p, e
        yield path, E


class Hulls(NamedTuple):
    size: np.ndarray  # (C,) int, |H_i|
    score: np.ndarray  # (C,) E_full / max(1, |H_i|)
    members: np.ndarray  # (C, max_size) int, −1 padded, in order of selection
    e_hull: np.ndarray  # (C,) E_i(H_i)
    e_full: np.ndarray  # (C,) E_i(all peers)


def hull_all(C, eps: float = 0.05, max_size: int = 10, lam: float = LAM, e_full=None,
             targets=None, block: int = 128) -> Hulls:
    """Compact hulls: greedy peers until E_i(H) ≥ (1−eps)·E_full or |H| = max_size; size 0 when E_full ≤ 0.

    targets: channels to process (default all); e_full: E_i(all peers) per channel (C,) or per target.
    Rows of the result follow targets.
    """
    C = np.asarray(C, np.float64)
    n = C.shape[0]
    targets = np.arange(n) if targets is None else np.asarray(targets, np.intp).reshape(-1)
    if e_full is None:
        e_full = peer_r2_full(C, lam)
    e_full = np.asarray(e_full, np.float64)[targets] if len(e_full) == n else np.asarray(e_full, np.float64)
    T = len(targets)
    size = np.zeros(T, np.intp)
    members = np.full((T, max_size), -1, np.intp)
    e_hull = np.zeros(T)
    n_steps = min(max_size, n - 1)
    M = C + lam * np.eye(n)
    goal = (1.0 - eps) * e_full
    for lo in range(0, T, block):
        sl = slice(lo, min(lo + block, T))
        need = e_full[sl] > 0
        if n_steps <= 0 or not need.any():
            continue
        idx = np.flatnonzero(need)  # targets with nothing to explain keep size 0
        g = goal[sl][idx]
        for path, E in _greedy_paths(M, targets[sl][idx], n_steps):
            s = np.count_nonzero(path[0] >= 0)
            if np.all((E[:, :s] >= g[:, None]).any(1)):
                break
        reached = E[:, :s] >= g[:, None]
        sz = np.where(reached.any(1), reached.argmax(1) + 1, s)
        rows = lo + idx
        size[rows] = sz
        e_hull[rows] = np.clip(E[np.arange(len(idx)), sz - 1], 0.0, 1.0)
        keep = np.arange(s)[None, :] < sz[:, None]
        members[rows, :s] = np.where(keep, path[:, :s], -1)
    score = e_full / np.maximum(1, size)
    return Hulls(size, score, members, e_hull, e_full)


def hull(C, i: int, eps: float = 0.05, max_size: int = 10, lam: float = LAM, e_full=None):
    """Compact hull of one channel: (members in selection order, E_i(H))."""
    C = np.asarray(C, np.float64)
    if e_full is None:
        e_full = peer_explanation(C, i, np.delete(np.arange(C.shape[0]), i), lam)
    h = hull_all(C, eps, max_size, lam, e_full=np.atleast_1d(float(e_full)), targets=[i])
    return h.members[0, : h.size[0]], float(h.e_hull[0])
