"""Single-channel lesions, peer replacement and the predictor tables (METHOD §6), written to `/lesion`.

Per layer: the evaluation images go through the layer's prefix once; then each lesion (and each replacement
variant) runs only the suffix, K variants per pass. A layer's results are written as soon as it finishes, with a
per-layer done flag, so a killed run resumes at the first unfinished layer.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .. import store
from ..errors import ChanaxisError
from ..progress import progress_bar
from . import predictors as pred
from . import scores as sc
from ._common import (ce_and_correct, check_stage_config, evaluate, load_eval_images, metrics_table, open_model,
                      require_metrics, strings)
from .masks import lesion_variants
from .replace import LAM, layer_moments, random_peer_sets, replacement_matrix, replacer
from .suffix import SuffixRunner

DAMAGE_VARS = ("damage_loss", "damage_acc", "replaced_damage", "replaced_damage_top8", "mean_ablation_damage",
               "random_peer_damage")
REPLACE_KINDS = ("replaced_damage", "replaced_damage_top8", "mean_ablation_damage", "random_peer_damage")
PEER_SUPPORT = ("hull_score", "peer_r2_full")  # (chosen) the peer-support variables of the incremental R²
NOT_PREDICTORS = ("dead", "cluster_local", "cluster_target")


def select_channels(m: xr.Dataset, fraction: float, all_channels: bool, seed: int) -> dict[str, np.ndarray]:
    """Per layer (in /metrics order): a seeded random `fraction` of its channels (≥ 1), or all of them."""
    layer = strings(m["layer"].values)
    out = {}
    for d, name in enumerate(dict.fromkeys(layer)):
        c = int((layer == name).sum())
        if all_channels:
            out[name] = np.arange(c)
        else:
            n = max(1, int(round(fraction * c)))
            out[name] = np.sort(np.random.default_rng([seed, d]).choice(c, n, replace=False))
    return out


def lesion(run, all_channels: bool = False, fraction: float = 0.2, seed: int = 0, eval_images: int | None = 1000,
           batch_size: int = 256, replace: bool = True, device: str = "cpu", model=None, progress: bool = True,
           overwrite: bool = False, suffix: bool = True, n_bins: int = 5) -> str:
    """Lesion channels of every layer of the run store at `run`; fills `/lesion`; resumable; returns the path."""
    if not all_channels and not 0.0 < fraction <= 1.0:
        raise ChanaxisError(f"--fraction must be in (0, 1], not {fraction}")
    if batch_size < 1:
        raise ChanaxisError(f"--batch-size must be ≥ 1, not {batch_size}")
    grp = store.open_group(run, mode="r+")
    require_metrics(run, grp)
    config = {"all": bool(all_channels), "fraction": 1.0 if all_channels else float(fraction), "seed": int(seed),
              "eval_images": eval_images, "replace": bool(replace), "ridge_lam": LAM, "n_bins": n_bins,
              "peer_support": list(PEER_SUPPORT), "recovery_min_damage": 1e-4}
    check_stage_config(grp, "lesion", config, overwrite, f"lesion {run}")
    if grp.attrs.get("status", {}).get("lesion") == "done" and "lesion" in grp:
        return str(run)
    m = metrics_table(run)
    missing = [k for k in ("input_capture", "task_info") + (("hull_members", "top8_peers") if replace else ())
               if k not in m]
    if missing:
        raise ChanaxisError(f"/metrics lacks '{missing[0]}' (lesions need the local and target metrics); rerun "
                            f"`chanaxis metrics {run} --only local,target`")
    model = open_model(run, model, device)
    if replace and not hasattr(model, "module"):
        raise ChanaxisError("peer replacement rewrites a layer's output inside a torch model, which this model "
                            "is not; pass --no-replace to lesion without it")
    chans = select_channels(m, fraction, all_channels, seed)
    names = list(chans)
    offsets = np.cumsum([0] + [len(v) for v in chans.values()])
    n_units = int(offsets[-1])
    lg = _raw_group(grp, config, names, n_units)
    done = np.asarray(lg["layer_done"][...], bool)
    x, y, einfo = load_eval_images(run, eval_images)
    store.set_status(grp, "lesion", "running")
    base_loss, base_acc = evaluate(model, x, y, batch_size)
    layer_of_metrics = strings(m["layer"].values)
    with progress_bar(progress) as bar:
        per = 1 + (len(REPLACE_KINDS) if replace else 0)
        todo = [i for i, n in enumerate(names) if not done[i]]
        task = bar.add_task("lesion", total=n_units * per,
                            completed=sum(len(chans[names[i]]) for i in range(len(names)) if done[i]) * per)
        for li in todo:
            name = names[li]
            ch = chans[name]
            peer_sets, moments = None, None
            if replace:
                rows = np.flatnonzero(layer_of_metrics == name)[ch]
                hull = [r[r >= 0] for r in np.asarray(m["hull_members"].values)[rows]]
                top8 = [r[r >= 0] for r in np.asarray(m["top8_peers"].values)[rows]]
                rand = random_peer_sets([len(h) for h in hull], model.graph[name].c_out, ch, seed=[seed, li])
                peer_sets = dict(zip(REPLACE_KINDS, (hull, top8, [[]] * len(ch), rand)))
                moments = layer_moments(run, name)
            res, mode = layer_damages(model, name, x, y, ch, (base_loss, base_acc), moments, peer_sets,
                                      batch_size, suffix, advance=lambda n: bar.update(task, advance=n))
            sl = slice(int(offsets[li]), int(offsets[li + 1]))
            for k, v in res.items():
                lg[k][sl] = v
            lg["run_mode"][li] = mode
            lg["layer_done"][li] = True  # last: the layer counts only once its results are on disk
    _finish(run, grp, m, config, chans, names, base_loss, base_acc, einfo, n_bins, replace)
    store.set_status(grp, "lesion", "done")
    return str(run)


def layer_damages(model, layer: str, x, y, channels, base: tuple[float, float], moments=None,
                  peer_sets: dict | None = None, batch_size: int = 256, suffix: bool = True, advance=None):
    """Damage of silencing each of `channels` of `layer` on (x, y), and of replacing it from each peer set.

    Returns ({"damage_loss" (nats), "damage_acc" (%), one loss damage per peer-set kind}, execution mode).
    `peer_sets`: kind → one peer list per channel; `moments` (calibration Moments) fit the ridge replacement."""
    spec = model.graph[layer]
    ch = np.asarray(channels, np.intp)
    runner = SuffixRunner(model, layer, use_fx=suffix)
    nb = min(len(x), batch_size)
    k_var = max(1, batch_size // nb)
    kinds = list(peer_sets or {})
    masks = lesion_variants(spec.c_out, ch)
    repl = None
    if kinds:
        sets = [s for k in kinds for s in peer_sets[k]]
        repl = replacement_matrix(moments, np.tile(ch, len(kinds)), sets, LAM)
    n_var = len(ch) * (1 + len(kinds))
    ce, ok = np.zeros(n_var), np.zeros(n_var)
    for lo in range(0, len(x), nb):
        xb, yb = x[lo:lo + nb], y[lo:lo + nb]
        cache = runner.prefix(xb)
        for k0 in range(0, len(ch), k_var):
            k1 = min(len(ch), k0 + k_var)
            c, a = ce_and_correct(runner.run(cache, mask=masks[k0:k1]), yb)
            ce[k0:k1] += c
            ok[k0:k1] += a
            if advance:
                advance((k1 - k0) * len(xb) / len(x))
        if repl is not None:
            t, B, b = repl
            for k0 in range(0, len(t), k_var):
                k1 = min(len(t), k0 + k_var)
                fn = replacer(t[k0:k1], B[k0:k1], b[k0:k1], spec.layout)
                c, _ = ce_and_correct(runner.run(cache, replace=fn, k=k1 - k0), yb)
                ce[len(ch) + k0:len(ch) + k1] += c
                if advance:
                    advance((k1 - k0) * len(xb) / len(x))
    base_loss, base_acc = base
    out = {"damage_loss": ce[:len(ch)] / len(x) - base_loss, "damage_acc": base_acc - 100 * ok[:len(ch)] / len(x)}
    for j, k in enumerate(kinds):
        out[k] = ce[len(ch) * (j + 1):len(ch) * (j + 2)] / len(x) - base_loss
    mode = runner.mode if runner.mode == "suffix" else f"full_forward ({runner.reason})"
    return out, mode


def _raw_group(grp, config, names, n_units):
    if "lesion" in grp and "layer_done" in grp["lesion"]:
        return grp["lesion"]
    lg = grp.require_group("lesion")
    lg.attrs["config"] = store._jsonable(config)
    for k in DAMAGE_VARS:
        store.new_array(lg, k, (n_units,), ["unit"], "float64")[:] = np.nan
    store.new_array(lg, "layer_done", (len(names),), ["layer"], "bool", chunks=(1,))
    store.new_array(lg, "run_mode", (len(names),), ["layer"], str, chunks=(1,))
    return lg


def _finish(run, grp, m, config, chans, names, base_loss, base_acc, einfo, n_bins, replace):
    lg = grp["lesion"]
    data = {k: np.asarray(lg[k][...], np.float64) for k in DAMAGE_VARS}
    modes = [str(v) for v in strings(lg["run_mode"][...])]
    layer_of_metrics = strings(m["layer"].values)
    rows = np.concatenate([np.flatnonzero(layer_of_metrics == n)[chans[n]] for n in names])
    ds = xr.Dataset(coords={
        "layer": ("unit", strings([n for n in names for _ in chans[n]])),
        "channel": ("unit", np.concatenate([chans[n] for n in names]).astype(np.int64)),
        "depth": ("unit", np.asarray(m["depth"].values)[rows]),
        "metrics_unit": ("unit", rows.astype(np.int64)),
    })
    d = data["damage_loss"]
    floor = config["recovery_min_damage"]
    ds["damage_loss"] = ("unit", d, {"units": "nats", "description": "increase of mean cross-entropy on the "
                                     "evaluation images when the channel is silenced (post-BN zero where a BN "
                                     "follows)"})
    ds["damage_acc"] = ("unit", data["damage_acc"], {"units": "%", "description": "accuracy lost (percentage points; "
                                                      "positive = worse) when the channel is silenced"})
    if replace:
        desc = {"replaced_damage": "hull peers H_i", "replaced_damage_top8": "the 8 peers of largest |rho|",
                "mean_ablation_damage": "control: the calibration mean of the channel",
                "random_peer_damage": "control: a random peer set of the hull's size"}
        for k in REPLACE_KINDS:
            ds[k] = ("unit", data[k], {"units": "nats", "description": "damage when the channel's pre-norm output is "
                                       f"replaced by a ridge fit from {desc[k]} (METHOD §6)"})
            rk = "recovery" + k[len("replaced_damage"):] if k.startswith("replaced_damage") else \
                "recovery_" + k[:-len("_damage")]
            with np.errstate(divide="ignore", invalid="ignore"):
                rec = np.where(d > floor, (d - data[k]) / d, np.nan)
            ds[rk] = ("unit", rec, {"units": "fraction", "description": f"(damage − {k}) / damage; NaN where "
                                    f"damage ≤ {floor} nats"})
    execution = {n: md for n, md in zip(names, modes)}
    ds.attrs.update({"config": store._jsonable(config), "base_loss_nats": float(base_loss),
                     "base_accuracy_pct": float(base_acc), "eval": einfo, "execution": execution,
                     "suffix_runs": all(v == "suffix" for v in modes),
                     "lesion": "post-BN zero where a per-channel BN follows, else the layer output itself (METHOD §6)",
                     "replacement": f"ridge (lambda {LAM} on standardised channels) from calibration moments; fed "
                                    "at the pre-norm hook point, then the layer's norm as usual"})
    ds["layer_done"] = ("layer_index", np.ones(len(names), bool))
    ds["run_mode"] = ("layer_index", strings(modes))
    store.write_dataset(grp, "lesion", ds)
    grp["lesion"].attrs["config"] = store._jsonable(config)
    store.write_dataset(grp, "lesion/predictors", _predictor_dataset(m, rows, ds, n_bins))


def _predictor_dataset(m, rows, ds, n_bins) -> xr.Dataset:
    sub = m.isel(unit=rows)
    scores = {k: np.asarray(v.values, np.float64) for k, v in sub.data_vars.items()
              if v.dims == ("unit",) and k not in NOT_PREDICTORS and np.issubdtype(v.dtype, np.number)}
    for meth in ("ix_minus_red", "ix_plus_red", "composite_local", "hull", "composite_target"):
        try:
            scores[f"score_{meth}"] = sc.score(meth, m)[rows]
        except KeyError:
            pass
    peer = {k: scores[k] for k in PEER_SUPPORT if k in scores}
    t = pred.predictor_tables(ds["layer"].values, ds["damage_loss"].values, scores, scores["task_info"],
                              scores["input_capture"], peer, n_bins)
    r2 = t["r2"]
    out = xr.Dataset(
        {"spearman": (("layer", "metric"), t["spearman"], {"units": "Spearman rho", "description":
                                                           "Spearman(score, -damage_loss) within the layer"}),
         "n_units": ("layer", t["n_units"], {"description": "lesioned channels of the layer"}),
         "spearman_layer_mean": ("metric", t["spearman_layer_mean"], {"units": "Spearman rho"}),
         "within_bin": (("layer", "metric"), t["within_bin"], {
             "units": "Spearman rho", "description": f"Spearman(score, -damage) inside {n_bins} quantile bins of "
                                                     "task_info, pooled over the bins by Fisher z (weights n-3)"}),
         "within_bin_pooled": ("metric", t["within_bin_pooled"], {
             "units": "Spearman rho", "description": "within-bin Spearman pooled over all bins of all layers "
                                                     "(Fisher z, weights n-3)"}),
         "within_bin_n_bins": ("metric", t["within_bin_n_bins"], {"description": "bins with n > 3 that entered"}),
         "r2_base": ("r2_scope", r2[:, 0], {"units": "R^2", "description": "OLS of damage on (input_capture, "
                                            "task_info), within-layer percentile ranks"}),
         "r2_full": ("r2_scope", r2[:, 1], {"units": "R^2", "description": "adding peer support: "
                                            + ", ".join(PEER_SUPPORT)}),
         "delta_r2": ("r2_scope", r2[:, 2], {"units": "R^2", "description": "incremental R^2 of peer support"}),
         "delta_r2_p": ("r2_scope", r2[:, 3], {"description": "nested-model F test p-value"})},
        coords={"layer": strings(t["names"]), "metric": strings(t["metrics"]),
                "r2_scope": strings(t["r2_scopes"])})
    out.attrs.update({"sign": "positive = a high score marks a channel whose lesion hurts little",
                      "n_bins": n_bins, "peer_support": list(PEER_SUPPORT)})
    return out
