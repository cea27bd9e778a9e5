"""Sufficient statistics of a layer: first and second moments of the channels Y and the target T.

Every estimator in METHOD.md is a function of these moments, so a streaming pass only has to accumulate
n, ΣY, YᵀY, ΣT, ΣT², YᵀT (float64) and never hold the samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VAR_FLOOR = 1e-12  # METHOD: variances floored at 1e-12; at or below it a channel counts as dead
RHO_MAX = 0.999  # METHOD: |ρ| clipped before any log


@dataclass
class Moments:
    """Population (divide-by-n) moments of channels Y (C,) and scalar target T."""

    n: float
    mean_y: np.ndarray
    cov_yy: np.ndarray
    mean_t: float
    var_t: float
    cov_yt: np.ndarray

    def __post_init__(self):
        self.mean_y = np.asarray(self.mean_y, np.float64)
        self.cov_yy = np.asarray(self.cov_yy, np.float64)
        self.cov_yt = np.asarray(self.cov_yt, np.float64)
        self.mean_t, self.var_t, self.n = float(self.mean_t), float(self.var_t), float(self.n)
        c = self.mean_y.shape[0]
        if self.cov_yy.shape != (c, c) or self.cov_yt.shape != (c,):
            raise ValueError(f"inconsistent shapes: mean_y {self.mean_y.shape}, cov_yy {self.cov_yy.shape}, "
                             f"cov_yt {self.cov_yt.shape}")

    @classmethod
    def from_sums(cls, n, sy, syy, st, stt, syt) -> "Moments":
        """From raw sums over samples: ΣY (C,), YᵀY (C,C), ΣT, ΣT², YᵀT (C,)."""
        n = float(n)
        if n <= 0:
            raise ValueError("no samples")
        mean_y = np.asarray(sy, np.float64) / n
        mean_t = float(st) / n
        cov = np.asarray(syy, np.float64) / n - np.outer(mean_y, mean_y)
        cov = 0.5 * (cov + cov.T)  # float sums need not be exactly symmetric
        var_t = max(float(stt) / n - mean_t**2, 0.0)
        cov_yt = np.asarray(syt, np.float64) / n - mean_y * mean_t
        return cls(n, mean_y, cov, mean_t, var_t, cov_yt)

    @classmethod
    def from_samples(cls, Y, T) -> "Moments":
        Y = np.asarray(Y, np.float64)
        T = np.asarray(T, np.float64).reshape(-1)
        if Y.ndim != 2 or Y.shape[0] != T.shape[0]:
            raise ValueError(f"Y must be (n, C) and T (n,), got {Y.shape} and {T.shape}")
        return cls.from_sums(Y.shape[0], Y.sum(0), Y.T @ Y, T.sum(), T @ T, Y.T @ T)

    @property
    def n_channels(self) -> int:
        return self.mean_y.shape[0]

    @property
    def var_y(self) -> np.ndarray:
        return np.maximum(np.diag(self.cov_yy), 0.0)

    @property
    def target_defined(self) -> bool:
        """Whether T varies over the samples: the target metrics are undefined where it does not (a one-output
        model, or a margin that is constant)."""
        return bool(np.isfinite(self.var_t) and self.var_t > VAR_FLOOR)

    @property
    def dead(self) -> np.ndarray:
        return self.var_y <= VAR_FLOOR

    @property
    def t_constant(self) -> bool:
        return self.var_t <= VAR_FLOOR

    def rho_yy(self, rho_max: float = RHO_MAX) -> np.ndarray:
        """Channel correlation matrix; dead channels uncorrelated with everyone, unit diagonal."""
        sd = np.sqrt(np.maximum(self.var_y, VAR_FLOOR))
        r = self.cov_yy / np.outer(sd, sd)
        dead = self.dead
        r[dead, :] = 0.0
        r[:, dead] = 0.0
        np.clip(r, -rho_max, rho_max, out=r)
        np.fill_diagonal(r, 1.0)  # the diagonal is never logged; 1 keeps C + λI a correlation ridge
        return r

    def rho_yt(self, rho_max: float = RHO_MAX) -> np.ndarray:
        if self.t_constant:
            return np.zeros(self.n_channels)
        sd = np.sqrt(np.maximum(self.var_y, VAR_FLOOR))
        r = self.cov_yt / (sd * np.sqrt(self.var_t))
        r[self.dead] = 0.0
        return np.clip(r, -rho_max, rho_max)

    def corr(self, rho_max: float = RHO_MAX) -> np.ndarray:
        """(C+1)×(C+1) correlation of [T, Y]: index 0 is T."""
        c = self.n_channels
        out = np.empty((c + 1, c + 1))
        out[0, 0] = 1.0
        out[0, 1:] = out[1:, 0] = self.rho_yt(rho_max)
        out[1:, 1:] = self.rho_yy(rho_max)
        return out


def gaussian_mi(rho, rho_max: float = RHO_MAX) -> np.ndarray:
    """I = −½ log(1 − ρ²) for jointly Gaussian scalars, elementwise, ρ clipped first."""
    r = np.clip(np.asarray(rho, np.float64), -rho_max, rho_max)
    return -0.5 * np.log1p(-r * r)
