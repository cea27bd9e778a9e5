"""Intervals that say what they resample: a paired bootstrap over evaluation images, with seeds resampled too when
there are enough of them.

Every compared cell (a method at a pruning level and seed) is evaluated on the *same* images, so a difference between
two methods is paired image by image: the statistic is the mean over seeds of (metric_A − metric_B), each metric
computed from the per-image outcomes. A resample draws the evaluation images with replacement **once** and applies
that draw to every level, both methods and every seed (all of them saw the same images: drawing images afresh for
each seed would treat the shared image noise as independent and narrow the interval by up to √seeds); with
≥ `MIN_SEEDS` seeds it also draws the seeds with replacement (a two-way bootstrap of the seeds × images design). With
fewer seeds only the images are resampled, and the interval covers image sampling only; `Interval.resampled` says
which.

Metrics that are linear in the per-image outcomes (accuracy, mean loss, and the MACs-matched AUC, which is a fixed
linear combination of the accuracies at the levels once the curves' MACs reductions are fixed) reduce a resample to
a weighted mean of per-image paired contributions `z[seed, image]`, so recomputing every level's accuracy and the AUC
for each of 10 000 resamples is one matrix product. Pure numpy.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_SEEDS = 3              # seeds are resampled from this many on
NO_VARIATION = "no variation in the resampled outcomes"
NOT_MEASURED = "not measured"
_BLOCK_VALUES = 8_000_000  # resample weights held at once (64 MB of float64)


class Interval(NamedTuple):
    """A point estimate and its percentile bootstrap bounds. `resampled` says what the interval resamples; when the
    bounds are NaN it says why there is no interval instead (it is never a zero-width interval)."""
    estimate: float
    low: float
    high: float
    resampled: str

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


def resamples_seeds(n_seeds: int) -> bool:
    return n_seeds >= MIN_SEEDS


def describe(n_seeds: int, n_images: int, n_resamples: int, confidence: float = 0.95) -> str:
    """What an interval over `n_seeds` × `n_images` paired outcomes resamples, in words."""
    head = f"{100 * confidence:g} % percentile bootstrap, {n_resamples} resamples"
    if resamples_seeds(n_seeds):
        return (f"{head} of the {n_seeds} seeds and of the {n_images} evaluation images (one image draw shared by "
                f"every seed, level and method: all were evaluated on the same images; spread rescaled to the "
                f"crossed seeds × images variance, so seed × image noise counts once)")
    return (f"{head} of the {n_images} evaluation images only (fewer than {MIN_SEEDS} seeds: the interval covers "
            f"image sampling only, not seed variation)")


def curve_contributions(outcomes, weights) -> np.ndarray:
    """Per-image contributions (seeds × images) to a linear functional of per-level means: `outcomes` is
    seeds × levels × images, `weights` seeds × levels (e.g. the AUC's weight of each level's accuracy), so that
    mean over images of the result = Σ_level weight · mean over images of the outcome."""
    o = np.asarray(outcomes, np.float64)
    w = np.asarray(weights, np.float64)
    if o.ndim != 3 or w.shape != o.shape[:2]:
        raise ValueError(f"outcomes must be seeds × levels × images and weights seeds × levels, not {o.shape} and "
                         f"{w.shape}")
    return np.einsum("sl,sln->sn", w, o)


def paired_difference(a, b, *, scale: float = 100.0, n_resamples: int = 10_000, confidence: float = 0.95,
                      seed: int = 0) -> Interval:
    """Mean over seeds of scale·(mean_A − mean_B) over the same images; `a`, `b` seeds × images (bool correctness:
    with the default scale, accuracy in %)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be seeds × images, not {a.shape} and {b.shape}")
    return bootstrap_mean(scale * (a - b), n_resamples=n_resamples, confidence=confidence, seed=seed)


def paired_curve_difference(a, b, weights_a, weights_b, *, scale: float = 100.0, n_resamples: int = 10_000,
                            confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean over seeds of the difference of two linear curve summaries (the MACs-matched AUC: weights from
    `chanaxis.interventions.curves.auc_weights`); `a`, `b` seeds × levels × images, weights seeds × levels. Each
    resample recomputes every level's accuracy from the same image draw for both methods."""
    z = scale * (curve_contributions(a, weights_a) - curve_contributions(b, weights_b))
    return bootstrap_mean(z, n_resamples=n_resamples, confidence=confidence, seed=seed)


def bootstrap_mean(z, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0):
    """Percentile bootstrap of the mean over seeds and images of `z` (seeds × images, or K × seeds × images for K
    statistics resampled jointly: the same draws for all). Returns an `Interval`, or a list of K."""
    z = np.asarray(z, np.float64)
    single = z.ndim == 2
    if single:
        z = z[None]
    if z.ndim != 3:
        raise ValueError(f"z must be seeds × images or K × seeds × images, not {z.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    k, s, n = z.shape
    what = describe(s, n, n_resamples, confidence)
    finite = np.array([s > 0 and n > 0 and bool(np.isfinite(z[i]).all()) for i in range(k)], bool)
    est = np.array([z[i].mean() if finite[i] else np.nan for i in range(k)])
    varies = np.array([finite[i] and np.ptp(z[i]) > 0 for i in range(k)], bool)
    stats = np.full((k, n_resamples), np.nan)
    if varies.any():
        stats[varies] = _resampled_means(z[varies], n_resamples, np.random.default_rng(seed))
        if resamples_seeds(s):
            for i in np.flatnonzero(varies):
                stats[i] = _interaction_once(z[i], stats[i], est[i])
    q = np.quantile(stats[varies], [(1 - confidence) / 2, (1 + confidence) / 2], axis=1) if varies.any() else None
    out = []
    j = 0
    for i in range(k):
        if not finite[i]:
            out.append(Interval(np.nan, np.nan, np.nan, NOT_MEASURED))
            continue
        if not varies[i]:
            out.append(Interval(float(est[i]), np.nan, np.nan, NO_VARIATION))
            continue
        lo, hi = float(q[0, j]), float(q[1, j])
        j += 1
        if not hi > lo:  # e.g. one discordant image among thousands: every resample the same
            out.append(Interval(float(est[i]), np.nan, np.nan, NO_VARIATION))
        else:
            out.append(Interval(float(est[i]), lo, hi, what))
    return out[0] if single else out


def crossed_variance(z) -> float:
    """The unbiased variance of the grand mean of a balanced seeds × images table under the crossed random-effects
    model z = μ + seed + image + seed·image: (MS_seed + MS_image − MS_residual) / (S·N), each variance component
    truncated at 0 (so never below the residual's share)."""
    z = np.asarray(z, np.float64)
    s, n = z.shape
    g, r, c = z.mean(), z.mean(1), z.mean(0)
    ms_e = ((z - r[:, None] - c[None, :] + g) ** 2).sum() / max((s - 1) * (n - 1), 1)
    ms_a = n * ((r - g) ** 2).sum() / max(s - 1, 1)
    ms_b = s * ((c - g) ** 2).sum() / max(n - 1, 1)
    return (max(ms_a - ms_e, 0.0) + max(ms_b - ms_e, 0.0) + ms_e) / (s * n)


def _interaction_once(z, stats, est) -> np.ndarray:
    """Resampling both seeds and images counts the seed × image noise twice (once in each margin: Owen 2007, the
    pigeonhole bootstrap); the resampled statistics' spread around the estimate is rescaled to the crossed design's
    unbiased variance, so it counts once. The shape of the bootstrap distribution is kept."""
    v = stats.var()
    if not v > 0:
        return stats
    return est + np.sqrt(crossed_variance(z) / v) * (stats - est)


def _resampled_means(z: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """K × n_resamples resampled means of z (K × seeds × images): images drawn once per resample and shared by every
    seed and statistic; seeds drawn too from `MIN_SEEDS` on."""
    k, s, n = z.shape
    flat = z.reshape(k * s, n).T  # images × (K·seeds)
    out = np.empty((k, n_resamples))
    block = max(1, min(n_resamples, _BLOCK_VALUES // max(n, 1)))
    for b0 in range(0, n_resamples, block):
        nb = min(block, n_resamples - b0)
        draws = rng.integers(0, n, size=(nb, n))
        w = np.bincount((draws + n * np.arange(nb)[:, None]).ravel(), minlength=nb * n).reshape(nb, n)
        m = (w.astype(np.float64) @ flat).reshape(nb, k, s) / n  # each seed's resampled image mean
        if resamples_seeds(s):
            pick = rng.integers(0, s, size=(nb, s))
            v = np.bincount((pick + s * np.arange(nb)[:, None]).ravel(), minlength=nb * s).reshape(nb, s)
            out[:, b0:b0 + nb] = (m * v[:, None, :]).sum(-1).T / s
        else:
            out[:, b0:b0 + nb] = m.mean(-1).T
    return out
