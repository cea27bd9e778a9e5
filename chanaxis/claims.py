"""The paper's eight claims as verdicts on one run: the claim, the METHOD section it comes from, this run's statistic
with an interval that names what it resamples, the rule and its threshold, and the verdict.

Verdicts: "reproduced" (the interval lies on the claim's side of the threshold), "not reproduced" (it lies on the other
side), "inconclusive" (the interval crosses the threshold, or there is no interval: NaN bounds, zero width, too few
layers to resample) and "not measured" (the stage that feeds the statistic did not run, or its data is missing).

Everything here reads plain arrays from a run tree (`chanaxis.open_run`); the statistics are pure functions of arrays so
that they can be checked on synthetic inputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .estimators.ranks import spearman

# ---- thresholds: each is the line a statistic must clear for the claim to hold ------------------------------------
ALIGNMENT_RATIO_MAX = 0.5       # "well below": cross-axis |ρ| less than half of the within-axis |ρ| (chosen)
ARI_EXCESS_MAX = 0.2            # ARI above its permutation null by < 0.2: conventionally "little agreement" (chosen)
DECOUPLING_MIN = 0.0            # the claim is ordinal: coupling at initialisation above the trained value (METHOD §5)
Q_GAP_MIN = 0.0                 # ordinal: Q_R > Q_S (METHOD §4, "at every depth")
DEPTH_TREND_MIN = 0.0           # ordinal: Spearman(S3/S2, depth) > 0 means "rises with depth" (METHOD §4)
HULL_MARGIN_MIN = 0.0           # hull score strongest: its |within-bin ρ| exceeds every other metric's (METHOD §6)
LOCAL_MINUS_TARGET_MIN = 0.0    # ordinal: best local AUC − best target AUC > 0 in AUC points (METHOD §7)
MAGNITUDE_GAP_MAX = 2.0         # "competitive": magnitude within 2 AUC points (accuracy %) of the best local score
                                # (chosen; about the seed-to-seed spread of AUCs METHOD §7's protocol reports)
INERT_LOSS_NATS = 1e-4          # a lesion that moves the mean evaluation loss less than this changed nothing (chosen)
INERT_SHARE_MAX = 0.5           # more than half the lesions inert: their damage ranks are noise (chosen)
N_BOOT = 2000                   # bootstrap resamples of layers; percentile 95 % intervals
MIN_RESAMPLED = 3               # fewer layers than this: no interval (a bootstrap of 1–2 values means nothing)
BOOT_SEED = 0

LOCAL = ("input_capture", "peer_overlap", "weight_norm_sq", "peer_r2_full", "peer_r2_top8", "hull_score")
TARGET = ("task_info", "redundancy_t", "synergy", "unique_t")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not measured")


@dataclass
class Measured:
    """One statistic: its value, interval bounds (None: no interval), what was resampled, and notes. `missing` set:
    not measured, for that reason. `fails`: the rule fails outright whatever the interval says (a reason)."""
    value: float | None = None
    low: float | None = None
    high: float | None = None
    resampled: str = ""
    note: str = ""
    missing: str = ""
    fails: str = ""
    force: tuple[str, str] | None = None


@dataclass(frozen=True)
class Claim:
    id: int
    claim: str
    method_section: str
    statistic: str
    rule: str
    threshold: float
    side: str                                   # "above": the claim holds when the statistic exceeds the threshold
    measure: Callable[..., Measured]


# ---- verdict -------------------------------------------------------------------------------------------------------
def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def has_interval(low, high) -> bool:
    """A real interval: both bounds finite and of non-zero width (a zero-width interval is never shown as a CI)."""
    low, high = _num(low), _num(high)
    return low is not None and high is not None and high > low


def verdict(value, low, high, threshold: float, side: str = "above") -> tuple[str, str]:
    """(verdict, reason) for a statistic against its threshold."""
    value = _num(value)
    if value is None:
        return "not measured", "no value"
    if not has_interval(low, high):
        why = "zero-width interval" if _num(low) is not None and _num(low) == _num(high) else "no interval"
        return "inconclusive", f"{why}: the value alone ({value:+.3g}) cannot be weighed against {threshold:g}"
    low, high = float(low), float(high)
    if side == "above":
        if low > threshold:
            return "reproduced", f"the whole interval is above {threshold:g}"
        if high <= threshold:
            return "not reproduced", f"the whole interval is at or below {threshold:g}"
    else:
        if high < threshold:
            return "reproduced", f"the whole interval is below {threshold:g}"
        if low >= threshold:
            return "not reproduced", f"the whole interval is at or above {threshold:g}"
    return "inconclusive", f"the interval [{low:+.3g}, {high:+.3g}] crosses {threshold:g}"


def judge(claim: Claim, m: Measured) -> dict:
    """The claim's row of the summary."""
    row = {"id": claim.id, "claim": claim.claim, "method_section": claim.method_section,
           "statistic": claim.statistic, "value": _num(m.value), "low": None, "high": None,
           "resampled": m.resampled, "rule": claim.rule}
    if has_interval(m.low, m.high):
        row["low"], row["high"] = _num(m.low), _num(m.high)
    if m.missing:
        row.update(value=None, low=None, high=None, verdict="not measured", reason=m.missing)
        return row
    v, reason = verdict(m.value, m.low, m.high, claim.threshold, claim.side)
    if m.fails and v != "not measured":
        v, reason = "not reproduced", m.fails
    elif m.force is not None:
        v, reason = m.force
    row["verdict"], row["reason"] = v, "; ".join(x for x in (reason, m.note) if x)
    return row


# ---- bootstrap ---------------------------------------------------------------------------------------------------
def bootstrap(stat: Callable[[np.ndarray], float], n: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
    """Percentile 95 % interval of stat(indices) over `n` units resampled with replacement; (None, None) when n is
    below MIN_RESAMPLED or the resampled values are not finite."""
    if n < MIN_RESAMPLED:
        return None, None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) < n_boot // 2:
        return None, None
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_columns(stat: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int = N_BOOT,
                      seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray] | None:
    """Percentile 95 % intervals of each entry of a vector statistic stat(indices) → (k,) over `n` units resampled
    with replacement (one draw shared by every entry); None when n is below MIN_RESAMPLED. An entry whose resampled
    values are finite in fewer than half of the resamples gets NaN bounds (no interval)."""
    if n < MIN_RESAMPLED:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], np.float64)
    ok = np.isfinite(vals)
    lo, hi = np.full(vals.shape[1], np.nan), np.full(vals.shape[1], np.nan)
    for k in range(vals.shape[1]):
        if ok[:, k].sum() >= n_boot // 2:
            lo[k], hi[k] = np.percentile(vals[ok[:, k], k], [2.5, 97.5])
    return lo, hi


def fisher_pooled(within_bin, weights, idx) -> np.ndarray:
    """Per metric, the within-bin ρ of the layers `idx` (with repeats) pooled as METHOD §6 pools bins: the mean of
    Fisher z weighted by each layer's weight (its Σ max(n_b − 3, 0)); NaN where no layer carries weight."""
    z = np.arctanh(np.clip(np.asarray(within_bin, np.float64)[idx], -0.999999, 0.999999))
    ww = np.where(np.isfinite(z), np.asarray(weights, np.float64)[idx][:, None], 0.0)
    tot = ww.sum(0)
    return np.where(tot > 0, np.tanh(np.where(ww > 0, ww * z, 0).sum(0) / np.maximum(tot, 1e-300)), np.nan)


def nanmean(x, axis=None):
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    cnt = ok.sum(axis=axis)
    tot = np.where(ok, x, 0.0).sum(axis=axis)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


# ---- statistics from arrays ----------------------------------------------------------------------------------------
def alignment_ratio(rho: np.ndarray, metrics: list[str]) -> Measured:
    """rho: (layer, metric, metric) within-layer Spearman. Ratio of the cross-axis mean |layer-mean ρ| to the
    within-axis one (mean of the local block and the target block), layers resampled."""
    ix = {m: k for k, m in enumerate(metrics)}
    loc = [ix[m] for m in LOCAL if m in ix]
    tar = [ix[m] for m in TARGET if m in ix]
    pairs_l = [(a, b) for k, a in enumerate(loc) for b in loc[k + 1:]]
    pairs_t = [(a, b) for k, a in enumerate(tar) for b in tar[k + 1:]]
    pairs_x = [(a, b) for a in loc for b in tar]
    if not pairs_l or not pairs_t or not pairs_x:
        return Measured(missing="the store lacks the local or target metrics")
    rho = np.asarray(rho, np.float64)

    blocks = [(np.array([a for a, _ in p]), np.array([b for _, b in p])) for p in (pairs_l, pairs_t, pairs_x)]

    def stat(idx):
        m = nanmean(rho[idx], axis=0)
        block = []
        for a, b in blocks:
            v = np.abs(m[a, b])
            block.append(v[np.isfinite(v)].mean() if np.isfinite(v).any() else np.nan)
        within = 0.5 * (block[0] + block[1])
        return block[2] / within if within > 0 else np.nan

    layers = np.arange(rho.shape[0])
    finite = np.isfinite(rho[:, pairs_x[0][0], pairs_x[0][1]]) if len(layers) else np.array([], bool)
    if not finite.any():
        return Measured(missing="the target axis is undefined in every layer (no cross-axis ρ)")
    value = stat(layers)
    lo, hi = bootstrap(stat, len(layers))
    return Measured(value, lo, hi, f"layers ({len(layers)}), {N_BOOT} resamples")


def ari_excess(ari, null) -> Measured:
    """Layer mean of ARI − its permutation-null mean, layers resampled."""
    d = np.asarray(ari, np.float64) - np.asarray(null, np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return Measured(missing="no layer has a defined ARI")
    lo, hi = bootstrap(lambda i: d[i].mean(), len(d))
    return Measured(float(d.mean()), lo, hi, f"layers ({len(d)}), {N_BOOT} resamples",
                    note=f"mean ARI itself {np.nanmean(np.asarray(ari, np.float64)):.3f}")


def decoupling(coupling, checkpoints) -> Measured:
    """coupling: (checkpoint, layer) Spearman I_X vs I(T;Y). First minus last checkpoint's layer mean, layers
    resampled (paired)."""
    c = np.asarray(coupling, np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        return Measured(missing="the trajectory has fewer than two checkpoints")
    d = c[0] - c[-1]
    ok = np.isfinite(d)
    if not ok.any():
        return Measured(missing="no layer has a defined coupling at both ends")
    d = d[ok]
    note = "" if int(checkpoints[0]) == 0 else f"the first checkpoint is epoch {int(checkpoints[0])}, not initialisation"
    lo, hi = bootstrap(lambda i: d[i].mean(), len(d))
    return Measured(float(d.mean()), lo, hi, f"layers ({len(d)}), paired, {N_BOOT} resamples",
                    note=f"epoch {int(checkpoints[0])} {nanmean(c[0]):+.2f} → epoch {int(checkpoints[-1])} "
                         f"{nanmean(c[-1]):+.2f}" + (f"; {note}" if note else ""))


def q_gap(q_r, q_s, layers=None) -> Measured:
    """Layer mean of Q_R − Q_S, layers resampled; the rule also needs Q_R > Q_S in every layer."""
    d = np.asarray(q_r, np.float64) - np.asarray(q_s, np.float64)
    names = list(layers) if layers is not None else [str(k) for k in range(len(d))]
    ok = np.isfinite(d)
    if not ok.any():
        return Measured(missing="no layer has both modularities")
    bad = [str(n) for n, x, o in zip(names, d, ok) if o and x <= Q_GAP_MIN]
    dd = d[ok]
    lo, hi = bootstrap(lambda i: dd[i].mean(), len(dd))
    fails = ""
    if bad:
        fails = f"Q_R ≤ Q_S at {len(bad)} of {len(dd)} layers ({', '.join(bad[:4])}{', …' if len(bad) > 4 else ''})"
    note = f"Q_R > Q_S at {len(dd) - len(bad)} of {len(dd)} layers"
    if (~ok).any():
        note += f"; {int((~ok).sum())} layers undefined"
    return Measured(float(dd.mean()), lo, hi, f"layers ({len(dd)}), {N_BOOT} resamples", note=note, fails=fails)


def depth_trend(s3_s2, depth) -> Measured:
    """Spearman of S3/S2 with depth over layers, layers resampled."""
    y, x = np.asarray(s3_s2, np.float64), np.asarray(depth, np.float64)
    ok = np.isfinite(y) & np.isfinite(x)
    y, x = y[ok], x[ok]
    if len(y) < 2:
        return Measured(missing="S3/S2 is defined in fewer than two layers")

    lo = hi = None
    if len(y) >= MIN_RESAMPLED:  # all resamples at once: Spearman = Pearson of the (tie-averaged) ranks
        idx = np.random.default_rng(BOOT_SEED).integers(0, len(y), (N_BOOT, len(y)))
        rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
        r = np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1), np.nan)
        r = r[np.isfinite(r)]
        if len(r) >= N_BOOT // 2:
            lo, hi = (float(v) for v in np.percentile(r, [2.5, 97.5]))
    return Measured(float(spearman(x, y)), lo, hi, f"layers ({len(y)}), {N_BOOT} resamples")


def bin_weights(n_units, n_bins: int) -> np.ndarray:
    """Each layer's Fisher weight in the within-bin pooling: Σ over its equal-count bins of max(n_b − 3, 0)."""
    return np.array([sum(max(len(p) - 3, 0) for p in np.array_split(np.arange(int(n)), n_bins)) for n in n_units],
                    np.float64)


def hull_margin(within_bin, metrics: list[str], n_units, n_bins: int = 5, value=None) -> Measured:
    """within_bin: (layer, metric) Fisher-pooled within-bin Spearman per layer. Statistic: |pooled ρ of hull_score|
    − the largest |pooled ρ| of any other channel metric (pruning composites `score_*` excluded); layers resampled,
    each layer pooled with its Fisher weight."""
    metrics = [str(m) for m in metrics]
    if "hull_score" not in metrics:
        return Measured(missing="no hull_score among the lesion predictors")
    keep = [k for k, m in enumerate(metrics) if not m.startswith("score_")]
    h = metrics.index("hull_score")
    others = [k for k in keep if k != h]
    wb = np.asarray(within_bin, np.float64)
    w = bin_weights(n_units, n_bins)

    def stat(idx):
        p = np.abs(fisher_pooled(wb, w, idx))
        if not np.isfinite(p[h]) or not np.isfinite(p[others]).any():
            return np.nan
        return p[h] - np.nanmax(p[others])

    layers = np.flatnonzero((w > 0) & np.isfinite(wb[:, h]))
    if len(layers) == 0:
        return Measured(missing="no layer has enough lesions per I(T;Y) bin for a within-bin ρ")
    point = stat(np.arange(len(w)))
    p = np.abs(fisher_pooled(wb, w, np.arange(len(w))))
    rival = metrics[others[int(np.nanargmax(p[others]))]]
    lo, hi = bootstrap(lambda i: stat(layers[i]), len(layers))
    return Measured(point, lo, hi, f"layers with within-bin ρ ({len(layers)}), Fisher-weighted, {N_BOOT} resamples",
                    note=f"|ρ| hull_score {p[h]:.3f} vs strongest other {rival} {p[others].max():.3f}")


# ---- statistics from a run tree ------------------------------------------------------------------------------------
def _ds(tree, node):
    try:
        return tree[node].to_dataset().compute()
    except KeyError:
        return None


def _has(tree, node) -> bool:
    try:
        tree[node]
        return True
    except KeyError:
        return False


def m_alignment(tree) -> Measured:
    s = _ds(tree, "structure")
    if s is None or "spearman" not in s:
        return Measured(missing="metrics' structure analyses were not run")
    return alignment_ratio(s["spearman"].values, [str(m) for m in s["metric"].values])


def m_groupings(tree) -> Measured:
    s = _ds(tree, "structure")
    if s is None or "ari" not in s:
        return Measured(missing="metrics' structure analyses were not run")
    return ari_excess(s["ari"].values, s["ari_null_mean"].values)


def m_trajectory(tree) -> Measured:
    t = _ds(tree, "trajectory")
    if t is None or "coupling_ix_it" not in t:
        return Measured(missing="no trajectory in this run (needs training checkpoints)")
    return decoupling(t["coupling_ix_it"].values, t["checkpoint"].values)


def m_modularity(tree) -> Measured:
    s = _ds(tree, "structure")
    if s is None or "q_r" not in s:
        return Measured(missing="metrics' structure analyses were not run")
    return q_gap(s["q_r"].values, s["q_s"].values, [str(x) for x in s["layer"].values])


def m_triplets(tree) -> Measured:
    s = _ds(tree, "structure")
    if s is None or "s3_s2" not in s:
        return Measured(missing="metrics' structure analyses were not run")
    names = [str(x) for x in s["layer"].values]
    depth = np.arange(len(names), dtype=np.float64)
    g = _ds(tree, "graph")
    if g is not None and "depth" in g:
        gd = dict(zip([str(x) for x in g["layer"].values], g["depth"].values))
        if all(n in gd for n in names):
            depth = np.array([gd[n] for n in names], np.float64)
    return depth_trend(s["s3_s2"].values, depth)


def lesion_inert(damage_loss, damage_acc) -> str:
    """'' unless more than INERT_SHARE_MAX of the lesions changed neither the evaluation accuracy nor the mean loss
    by INERT_LOSS_NATS: then a sentence saying so. Ranking channels by such damages ranks noise."""
    loss, acc = np.asarray(damage_loss, np.float64), np.asarray(damage_acc, np.float64)
    ok = np.isfinite(loss)
    if not ok.any():
        return ""
    inert = (np.abs(loss[ok]) < INERT_LOSS_NATS) & (np.nan_to_num(acc[ok]) == 0)
    share = float(inert.mean())
    if share <= INERT_SHARE_MAX:
        return ""
    return (f"{share * 100:.0f} % of the {int(ok.sum())} lesions changed neither the evaluation accuracy nor the mean "
            f"loss by {INERT_LOSS_NATS:g} nats: those channels barely reach the output (e.g. residual branches scaled "
            "by a small layer scale), and their damage ranks are noise")


def m_lesion(tree) -> Measured:
    if not _has(tree, "lesion") or not _has(tree, "lesion/predictors"):
        return Measured(missing="the lesion stage was not run")
    p = _ds(tree, "lesion/predictors")
    m = hull_margin(p["within_bin"].values, [str(m) for m in p["metric"].values], p["n_units"].values,
                    int(p.attrs.get("n_bins", 5)))
    les = _ds(tree, "lesion")
    inert = lesion_inert(les["damage_loss"].values, les["damage_acc"].values) if "damage_loss" in les else ""
    if inert and not m.missing:  # predictors of noise: never a verdict
        m.force = ("inconclusive", inert)
    return m


def pruning_inert(ds) -> str:
    """'' unless one-shot pruning changed no evaluation image's prediction in any cell (every method, level, seed):
    then a sentence saying so, with the largest per-image loss change (nats). Such a run's contrasts are zeros that
    say nothing about the axes: the pruned channels barely reach the output (a residual branch scaled by a small
    layer scale, as in a briefly trained ConvNeXt whose γ starts at 1e-6)."""
    if ds is None or "correct_oneshot" not in ds or "correct_base" not in ds:
        return ""
    same = (np.asarray(ds["correct_oneshot"].values) == np.asarray(ds["correct_base"].values)).all()
    if not same:
        return ""
    change = float(np.nanmax(np.abs(np.asarray(ds["loss_oneshot_image"].values, np.float64)
                                    - np.asarray(ds["loss_base_image"].values, np.float64))))
    removed = float(100 - np.nanmin(np.asarray(ds["macs_retained_pct"].values, np.float64))) \
        if "macs_retained_pct" in ds else math.nan
    return (f"one-shot pruning changed no evaluation image's prediction in any cell (up to {removed:.0f} % of the MACs "
            f"removed; largest per-image loss change {change:.2g} nats): the pruned channels barely reach the output "
            "(e.g. residual branches scaled by a small layer scale), so the pruning contrasts say nothing about the "
            "axes on this model")


def pruning_contrast(ds, contrast: str, pick: str = "min") -> Measured:
    """The contrast's mean and interval in each regime from the pruning node; the regime that binds the claim
    (`pick`: "min" = the weaker one for a claim that the contrast is positive, "max" for a claim that it is small)."""
    if ds is None:
        return Measured(missing="the pruning stage was not run")
    if "contrast_mean" not in ds:
        return Measured(missing="the pruning stage has not finished (no AUC contrasts in the store yet)")
    names = [str(c) for c in ds["contrast"].values]
    if contrast not in names:
        return Measured(missing=f"the pruning node has no '{contrast}' contrast")
    j = names.index(contrast)
    regimes = [str(r) for r in ds["regime"].values]
    attrs = {**ds.attrs, **ds["contrast_mean"].attrs, **ds["contrast_ci_low"].attrs}
    what = attrs.get("interval") or attrs.get("description") or "not recorded"
    n_seeds = int(ds.sizes.get("seed", 0))
    rows, per_cell = [], {}
    for i, r in enumerate(regimes):
        rows.append((r, _num(ds["contrast_mean"].values[i, j]), _num(ds["contrast_ci_low"].values[i, j]),
                     _num(ds["contrast_ci_high"].values[i, j])))
        if "contrast_resamples" in ds:  # per cell: what the interval resamples, or why there is none
            per_cell[r] = str(ds["contrast_resamples"].values[i, j])
    got = [x for x in rows if x[1] is not None]
    if not got:
        return Measured(missing="no pruning contrast measured (every regime is NaN)")
    per = "; ".join(f"{r} {m:+.2f} " + (f"[{lo:+.2f}, {hi:+.2f}]" if has_interval(lo, hi) else "(no interval)")
                    for r, m, lo, hi in got)
    # the binding regime: the claim must hold in every regime, so a regime that fails binds first, then one that is
    # inconclusive, then the one whose interval is least favourable
    side, thr = ("below", MAGNITUDE_GAP_MAX) if pick == "max" else ("above", LOCAL_MINUS_TARGET_MIN)
    rank = {"not reproduced": 0, "inconclusive": 1, "reproduced": 2}

    def order(x):
        v = verdict(x[1], x[2], x[3], thr, side)[0]
        edge = (x[2] if side == "above" else -x[3]) if has_interval(x[2], x[3]) else -math.inf
        return rank[v], edge
    bind = min(got, key=order)
    note = f"{per}; shown: {bind[0]}"
    inert = pruning_inert(ds)
    if inert:  # zeros from a model whose pruned channels do not matter: never a verdict
        return Measured(bind[1], bind[2], bind[3], per_cell.get(bind[0]) or str(what), note=note,
                        force=("inconclusive", inert))
    force = None
    if len(got) < len(rows):
        not_run = ", ".join(x[0] for x in rows if x[1] is None)
        note += f"; not run: {not_run}"
        if verdict(bind[1], bind[2], bind[3], thr, side)[0] == "reproduced":
            force = ("inconclusive", f"holds where measured, but {not_run} was not run")
    if "interval" not in attrs and n_seeds < 3:
        note += f"; the interval resamples {n_seeds} seed(s) only"
    if per_cell.get(bind[0]):
        what = per_cell[bind[0]]
    return Measured(bind[1], bind[2], bind[3], str(what), note=note, force=force)


def m_local_beats_target(tree) -> Measured:
    return pruning_contrast(_ds(tree, "pruning") if _has(tree, "pruning") else None, "best_local-best_target", "min")


def is_vgg16_bn(name: str) -> bool:
    n = str(name).lower().replace("-", "_")
    return "vgg16_bn" in n or "vgg_16_bn" in n


def m_magnitude_vgg(tree) -> Measured:
    name = tree.attrs.get("config", {}).get("model", {}).get("name", "")
    if not is_vgg16_bn(name):
        return Measured(missing=f"the claim is about VGG-16-BN; this run's model is {name or 'unknown'}")
    return pruning_contrast(_ds(tree, "pruning") if _has(tree, "pruning") else None, "best_local-magnitude", "max")


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "the axes are weakly aligned: cross-axis |ρ| well below within-axis |ρ|", "§4 Structure: Alignment",
          "cross-axis / within-axis mean |layer-mean Spearman ρ|",
          f"ratio < {ALIGNMENT_RATIO_MAX}", ALIGNMENT_RATIO_MAX, "below", m_alignment),
    Claim(2, "they group channels differently: ARI near 0, not above its null by much", "§4 Structure: Groupings",
          "layer mean of ARI − permutation-null ARI", f"excess < {ARI_EXCESS_MAX}", ARI_EXCESS_MAX, "below",
          m_groupings),
    Claim(3, "they separate in training: coupling ρ(I_X, I(T;Y)) at initialisation above the trained value",
          "§5 Training trajectory", "layer-mean Spearman I_X vs I(T;Y): first − last checkpoint",
          f"drop > {DECOUPLING_MIN:g}", DECOUPLING_MIN, "above", m_trajectory),
    Claim(4, "Q_R > Q_S at every depth", "§4 Structure: Modularity", "layer mean of Q_R − Q_S",
          f"Q_R − Q_S > {Q_GAP_MIN:g} in every layer, and the interval of the mean above {Q_GAP_MIN:g}", Q_GAP_MIN,
          "above", m_modularity),
    Claim(5, "S3/S2 rises with depth", "§4 Structure: Triplets", "Spearman(S3/S2, layer depth)",
          f"ρ > {DEPTH_TREND_MIN:g}", DEPTH_TREND_MIN, "above", m_triplets),
    Claim(6, "hull score is the strongest within-bin lesion predictor", "§6 Lesions: Predictors",
          "|within-bin ρ| of hull_score − the largest |within-bin ρ| of the other channel metrics",
          f"margin > {HULL_MARGIN_MIN:g}", HULL_MARGIN_MIN, "above", m_lesion),
    Claim(7, "local scores beat target scores at matched MACs (one-shot and fine-tuned)",
          "§7 FLOPs-matched pruning", "AUC best local − best target (AUC points, %), the weaker regime",
          f"> {LOCAL_MINUS_TARGET_MIN:g} in both regimes", LOCAL_MINUS_TARGET_MIN, "above", m_local_beats_target),
    Claim(8, "magnitude is competitive on VGG-16-BN", "§7 FLOPs-matched pruning",
          "AUC best local − magnitude (AUC points, %), the regime less favourable to magnitude",
          f"< {MAGNITUDE_GAP_MAX:g} in both regimes", MAGNITUDE_GAP_MAX, "below", m_magnitude_vgg),
)


# a few words per claim, for column headers (`chanaxis compare`)
SHORT = {1: "weak alignment", 2: "different groupings", 3: "separate in training", 4: "Q_R > Q_S every depth",
         5: "S3/S2 rises with depth", 6: "hull best lesion predictor", 7: "local > target pruning",
         8: "magnitude competitive (VGG-16-BN)"}


def evaluate(tree) -> list[dict]:
    """Every claim's row for the run tree `tree` (`chanaxis.open_run(path)`)."""
    rows = []
    for c in CLAIMS:
        try:
            m = c.measure(tree)
        except Exception as e:  # noqa: BLE001  a node of an older or partial layout must not stop the report
            m = Measured(missing=f"the data it needs is missing or malformed ({type(e).__name__}: {e})")
        rows.append(judge(c, m))
    return rows
