"""Peer replacement (METHOD §6, chosen): after lesioning channel i, feed Ŷ_i = β_Sᵀ Y_S + b at the hook point.

β is a ridge fit on the calibration samples, from the layer's moments: on standardised channels (the same
correlation-matrix ridge λ as the peer explanation E_i), rescaled to raw units, with b matching the means.
An empty S gives b = μ_i, the mean ablation.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from .. import moments
from ..estimators.stats import VAR_FLOOR, Moments

LAM = 1e-3


def layer_moments(run, layer: str) -> Moments:
    """The layer's calibration moments (the metrics stage's stored copy when present, else recomputed)."""
    return moments.load(run, layer)


def ridge_peers(m: Moments, i: int, peers, lam: float = LAM) -> tuple[np.ndarray, float]:
    """(β over `peers`, b) so that Ŷ_i = β·Y_peers + b."""
    return _ridge(_Standardised(m), i, _peer_set(i, peers), lam)


class _Standardised:
    """What every fit on one layer's moments shares, made once: the means, the standard deviations and (when a fit
    first needs it) the C×C correlation matrix."""

    def __init__(self, m: Moments):
        self.m, self.mu = m, m.mean_y
        self.sd = np.sqrt(np.maximum(m.var_y, VAR_FLOOR))

    @cached_property
    def R(self) -> np.ndarray:
        return self.m.cov_yy / np.outer(self.sd, self.sd)


def _peer_set(i: int, peers) -> np.ndarray:
    return np.asarray([p for p in np.asarray(peers, np.intp).reshape(-1) if p >= 0 and p != i], np.intp)


def _ridge(st: _Standardised, i: int, S: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    if S.size == 0:
        return np.zeros(0), float(st.mu[i])
    R, sd = st.R, st.sd
    beta_std = np.linalg.solve(R[np.ix_(S, S)] + lam * np.eye(S.size), R[S, i])
    beta = beta_std * sd[i] / sd[S]
    return beta, float(st.mu[i] - beta @ st.mu[S])


def replacement_matrix(m: Moments, targets, peer_sets, lam: float = LAM):
    """For K variants: target channel (K,), dense β (K, C) and b (K,)."""
    targets = np.asarray(targets, np.intp)
    B = np.zeros((len(targets), m.n_channels), np.float32)
    b = np.zeros(len(targets), np.float32)
    st = _Standardised(m)
    for k, (i, S) in enumerate(zip(targets, peer_sets)):
        S = _peer_set(int(i), S)
        beta, b[k] = _ridge(st, int(i), S, lam)
        B[k, S] = beta
    return targets, B, b


def replacer(targets, B, b, layout: str = "nchw"):
    """A function rewriting channel targets[k] of variant k in a raw layer output y (K·N rows)."""
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    B_t, b_t = torch.as_tensor(B), torch.as_tensor(b)

    def fn(y: torch.Tensor, k: int) -> torch.Tensor:
        s = y.shape
        yk = y.reshape(k, s[0] // k, *s[1:])
        Bd, bd, idx = B_t.to(y), b_t.to(y), targets.to(y.device)
        ar = torch.arange(k, device=y.device)
        if layout == "nhwc":
            yhat = torch.einsum("kc,knhwc->knhw", Bd, yk) + bd[:, None, None, None]
            yk[ar, :, :, :, idx] = yhat
        else:
            yhat = torch.einsum("kc,knchw->knhw", Bd, yk) + bd[:, None, None, None]
            yk[ar, :, idx] = yhat
        return yk.reshape(s)

    return fn


def random_peer_sets(sizes, c_out: int, targets, seed: int):
    """A random peer set per target, of the given size, never containing the target itself."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in zip(targets, sizes):
        pool = np.delete(np.arange(c_out), int(i))
        out.append(rng.choice(pool, size=min(int(n), pool.size), replace=False))
    return out
