"""The fixed calibration indices of a split, and their sha256 fingerprint."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np


def calibration_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """``np.random.default_rng(seed).choice(n_total, n, replace=False)``; n is capped at n_total (with a warning)."""
    if n > n_total:
        warnings.warn(f"asked for {n} calibration images but the split has only {n_total}; using all {n_total}",
                      stacklevel=2)
        n = n_total
    return np.random.default_rng(seed).choice(n_total, n, replace=False)


def indices_sha256(idx) -> str:
    """sha256 of the indices as little-endian int64 (stable across platforms and dtypes)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(idx, dtype="<i8")).tobytes()).hexdigest()
