"""Local axis, METHOD §2: signal power, input capture, weight norms, peer overlap (nats)."""
from __future__ import annotations

import numpy as np

from .stats import RHO_MAX, VAR_FLOOR, Moments, gaussian_mi


def signal_power(m: Moments) -> np.ndarray:
    """J_i = Var(Y_i) over the local samples."""
    return m.var_y


def input_capture(J, sigma0_sq: float | None = None) -> tuple[np.ndarray, float]:
    """I_X(i) = ½ log(1 + J_i/σ0²); σ0² defaults to the layer median of J. Returns (I_X, σ0² used)."""
    J = np.maximum(np.asarray(J, np.float64), 0.0)
    if sigma0_sq is None:
        sigma0_sq = float(np.median(J)) if J.size else 1.0
    sigma0_sq = max(float(sigma0_sq), VAR_FLOOR)  # a mostly-dead layer must not divide by 0
    return 0.5 * np.log1p(J / sigma0_sq), sigma0_sq


def weight_norm_sq(W) -> np.ndarray:
    """‖w_i‖² for filters shaped (C_out, ...)."""
    W = np.asarray(W, np.float64)
    return np.square(W.reshape(W.shape[0], -1)).sum(1)


def magnitude(W) -> np.ndarray:
    """‖w_i‖₂, the norm baseline."""
    return np.sqrt(weight_norm_sq(W))


def peer_overlap(rho, rho_max: float = RHO_MAX) -> np.ndarray:
    """R̄_X(i) = (1/C) Σ_{j≠i} −½ log(1 − ρ_ij²)."""
    mi = gaussian_mi(rho, rho_max)
    np.fill_diagonal(mi, 0.0)
    return mi.sum(1) / mi.shape[0]
