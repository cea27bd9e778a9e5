"""FLOPs-matched pruning (METHOD §7): local-axis, target-axis and baseline scores at matched MACs, into `/pruning`.

Every (method, level, seed) cell is written with a done flag as soon as it is measured, so a killed sweep resumes
at the first unfinished cell. Scores that do not depend on the seed are evaluated once and shared by all seeds
(only `random` scores and the fine-tuning order change with the seed).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import xarray as xr

from .. import store
from ..capabilities import require
from ..errors import ChanaxisError
from ..progress import progress_bar
from . import curves
from . import scores as sc
from ._common import (check_stage_config, evaluate, load_eval_images, metrics_table, open_model, require_metrics,
                      strings)
from .finetune import evaluate_module, finetune, taylor_scores
from .masks import PruningPlan

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SEEDS = (42, 123, 456, 789, 1011)
REGIMES = ("oneshot", "finetuned")
CELL_VARS = ("macs_retained", "channel_sparsity", "acc_oneshot", "loss", "acc_finetuned", "loss_finetuned")


def prune(run, methods=None, allocation: str | None = None, levels=LEVELS, finetune_epochs: int = 5,
          finetune_batches: int = 200, seeds=SEEDS, eval_images: int | None = 2000, batch_size: int = 128,
          lr: float = 1e-4, taylor_images: int = 1024, device: str = "cpu", model=None, progress: bool = True,
          overwrite: bool = False, n_resamples: int = 10_000) -> str:
    """Prune the model of the run store at `run` with each method at each channel sparsity; fills `/pruning`."""
    methods = sc.check_methods(sc.METHODS if methods is None else methods)
    if allocation is not None:
        sc.check_allocation(allocation)
    levels = sc.check_levels(levels)
    seeds = [int(s) for s in dict.fromkeys(seeds)]
    if not seeds:
        raise ChanaxisError("no seed given; pass e.g. --seeds 42 123 456 789 1011")
    if finetune_epochs < 0 or finetune_batches < 1:
        raise ChanaxisError("--finetune-epochs must be ≥ 0 and --finetune-batches ≥ 1")
    grp = store.open_group(run, mode="r+")
    require_metrics(run, grp)
    model = open_model(run, model, device)
    allocation = allocation or sc.default_allocation(model.graph)
    needs_taylor = "taylor" in methods or allocation == "taylor_hybrid"
    if needs_taylor:
        require(model, "gradients", what="the taylor score (--methods taylor, --allocation taylor_hybrid); pass "
                                         "--methods without taylor and another --allocation")
    if finetune_epochs > 0:
        require(model, "gradients", what="fine-tuning; pass --finetune-epochs 0 for one-shot pruning only")
    config = {"methods": methods, "allocation": allocation, "levels": levels, "seeds": seeds,
              "finetune_epochs": int(finetune_epochs), "finetune_batches": int(finetune_batches), "lr": lr,
              "optimizer": "adam", "eval_images": eval_images, "taylor_images": taylor_images,
              "batch_size": batch_size, "n_resamples": n_resamples}
    check_stage_config(grp, "pruning", config, overwrite, f"prune {run}")
    if grp.attrs.get("status", {}).get("pruning") == "done" and "pruning" in grp:
        return str(run)

    m = metrics_table(run)
    plan = PruningPlan(model)
    layer_of = strings(m["layer"].values)
    plan.prunable = [n for n in plan.prunable if n in set(layer_of)]  # a layer without metrics cannot be scored
    rows = {n: np.flatnonzero(layer_of == n) for n in plan.prunable}
    pg = _raw_group(grp, config, methods, levels, seeds, len(layer_of))
    x, y, einfo = load_eval_images(run, eval_images)
    base_loss, base_acc = evaluate(model, x, y, batch_size)
    taylor_unit = None
    if needs_taylor:
        if not bool(pg.attrs.get("taylor_done")):
            tx, ty = _calibration_images(run, taylor_images)
            t = taylor_scores(model, tx, ty, _unique(layer_of), batch_size)
            pg["taylor"][:] = np.concatenate([t[n] for n in _unique(layer_of)])
            pg.attrs["taylor_done"] = True
        taylor_unit = np.asarray(pg["taylor"][...], np.float64)
    taylor_layers = None if taylor_unit is None else {n: taylor_unit[r] for n, r in rows.items()}
    full = plan.full_macs
    train_ds = None
    if finetune_epochs > 0:
        from ..reload import dataset_from_store
        train_ds = dataset_from_store(run, split="train", transform="train").dataset

    one_done = np.asarray(pg["oneshot_done"][...], bool)
    ft_done = np.asarray(pg["finetune_done"][...], bool)
    store.set_status(grp, "pruning", "running")
    n_one = sum(len(seeds) if mth == "random" else 1 for mth in methods) * len(levels)
    n_ft = len(methods) * len(levels) * len(seeds) if finetune_epochs > 0 else 0
    with progress_bar(progress) as bar:
        task = bar.add_task("prune", total=n_one + n_ft)
        for mi, mth in enumerate(methods):
            for si, seed in enumerate(seeds):
                shared = mth != "random" and si > 0  # seed-free scores: reuse the first seed's one-shot cells
                s_unit = sc.score(mth, m, seed=seed, taylor=taylor_unit)
                s_layers = {n: s_unit[r] for n, r in rows.items()}
                for li, level in enumerate(levels):
                    cell = (mi, li, si)
                    if one_done[cell] and (finetune_epochs == 0 or ft_done[cell]):
                        bar.update(task, advance=(0 if shared else 1) + (1 if finetune_epochs else 0))
                        continue
                    keep = sc.allocate(s_layers, level, allocation, taylor_layers)
                    eff = plan.effective(keep)
                    if not one_done[cell]:
                        if shared:
                            vals = {k: pg[k][mi, li, 0] for k in ("macs_retained", "channel_sparsity",
                                                                   "acc_oneshot", "loss")}
                        else:
                            loss, acc = evaluate(model, x, y, batch_size, masks=plan.masks(eff))
                            pruned = sum(int((~k).sum()) for k in keep.values())
                            vals = {"macs_retained": plan.macs(eff), "channel_sparsity": pruned / plan.n_prunable(),
                                    "acc_oneshot": acc, "loss": loss}
                            bar.update(task, advance=1)
                        for k, v in vals.items():
                            pg[k][cell] = v
                        pg["oneshot_done"][cell] = True
                    if finetune_epochs > 0 and not ft_done[cell]:
                        net = finetune(model, eff, train_ds, finetune_epochs, finetune_batches, lr, seed, batch_size)
                        loss_ft, acc_ft = evaluate_module(net, x, y, batch_size, getattr(model, "device", "cpu"))
                        del net
                        pg["acc_finetuned"][cell] = acc_ft
                        pg["loss_finetuned"][cell] = loss_ft
                        pg["finetune_done"][cell] = True
                        bar.update(task, advance=1)
    ds = _assemble(pg, config, m, full, base_loss, base_acc, einfo, plan, n_resamples, taylor_unit)
    store.write_dataset(grp, "pruning", ds)
    grp["pruning"].attrs["config"] = store._jsonable(config)
    store.set_status(grp, "pruning", "done")
    return str(run)


def _unique(a):
    return list(dict.fromkeys(a))


def _calibration_images(run, n):
    """The first `n` calibration images of the store (its captured split, evaluation transform)."""
    from ..reload import dataset_from_store
    grp = store.open_group(run)
    idx = np.asarray(grp["samples/dataset_index"][...])[:n]
    ds = dataset_from_store(run).dataset
    items = [ds[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _raw_group(grp, config, methods, levels, seeds, n_units):
    if "pruning" in grp and "oneshot_done" in grp["pruning"]:
        return grp["pruning"]
    pg = grp.require_group("pruning")
    pg.attrs["config"] = store._jsonable(config)
    shape, dims = (len(methods), len(levels), len(seeds)), ["method", "level", "seed"]
    for k in CELL_VARS:
        store.new_array(pg, k, shape, dims, "float64")[...] = np.nan
    for k in ("oneshot_done", "finetune_done"):
        store.new_array(pg, k, shape, dims, "bool")
    store.new_array(pg, "taylor", (n_units,), ["unit"], "float64")[...] = np.nan
    return pg


def _assemble(pg, config, m, full, base_loss, base_acc, einfo, plan, n_resamples, taylor_unit) -> xr.Dataset:
    methods, levels, seeds = config["methods"], config["levels"], config["seeds"]
    raw = {k: np.asarray(pg[k][...], np.float64) for k in CELL_VARS}
    ds = xr.Dataset(coords={"method": strings(methods), "level": np.asarray(levels, np.float64),
                            "seed": np.asarray(seeds, np.int64),
                            "axis": ("method", strings([sc.AXIS[mm] for mm in methods]))})
    cube = ("method", "level", "seed")
    ds["macs_retained"] = (cube, raw["macs_retained"], {"units": "MACs", "description": "analytic MACs per image "
                           "from the effective kept in/out channels of every conv and linear (classifier included)",
                           "full_macs": int(full)})
    ds["macs_retained_pct"] = (cube, 100 * raw["macs_retained"] / full, {"units": "%"})
    ds["channel_sparsity"] = (cube, raw["channel_sparsity"], {"units": "fraction", "description": "pruned share of "
                              "the prunable channels (depthwise/grouped followers not counted)"})
    ds["acc_oneshot"] = (cube, raw["acc_oneshot"], {"units": "%", "description": "accuracy of the masked network, "
                         "no fine-tuning"})
    ds["loss"] = (cube, raw["loss"], {"units": "nats", "description": "mean cross-entropy, one-shot"})
    ds["acc_finetuned"] = (cube, raw["acc_finetuned"], {"units": "%", "description": "after Adam fine-tuning with "
                           "masks re-applied after each step (NaN: not run)"})
    ds["loss_finetuned"] = (cube, raw["loss_finetuned"], {"units": "nats"})
    reduction = 1 - raw["macs_retained"] / full
    ds["macs_reduction"] = (cube, reduction, {"units": "fraction", "description": "1 - macs_retained / full MACs"})
    auc = np.full((len(REGIMES), len(methods), len(seeds)), np.nan)
    bounds = np.full((len(REGIMES), 2), np.nan)
    for ri, key in enumerate(("acc_oneshot", "acc_finetuned")):
        acc = raw[key]
        if not np.isfinite(acc).any():
            continue
        curves_all = [(reduction[i, :, s], acc[i, :, s]) for i in range(len(methods)) for s in range(len(seeds))]
        lo, hi = curves.common_interval(curves_all)
        bounds[ri] = lo, hi
        for i in range(len(methods)):
            for s in range(len(seeds)):
                auc[ri, i, s] = curves.mean_over(reduction[i, :, s], acc[i, :, s], lo, hi)
    ds["auc"] = (("regime", "method", "seed"), auc, {"units": "%", "description": "mean accuracy over the MACs-"
                 "reduction interval every method covers (piecewise-linear in MACs reduction, exact trapezoid)"})
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        auc_mean = np.nanmean(auc, axis=2)
    ds["auc_mean"] = (("regime", "method"), auc_mean, {"units": "%", "description": "mean over seeds"})
    ds["auc_interval"] = (("regime", "bound"), bounds, {"units": "fraction of MACs removed"})
    ds = ds.assign_coords(regime=strings(REGIMES), bound=strings(["low", "high"]))
    names, diffs, stats_, best = _contrasts(methods, auc, n_resamples)
    ds = ds.assign_coords(contrast=strings(names))
    ds["contrast_diff"] = (("regime", "contrast", "seed"), diffs, {"units": "% (AUC points)",
                           "description": "paired per-seed AUC difference"})
    for j, k in enumerate(("contrast_mean", "contrast_ci_low", "contrast_ci_high")):
        ds[k] = (("regime", "contrast"), stats_[..., j], {"units": "% (AUC points)", "description":
                 "mean over seeds" if j == 0 else f"percentile bootstrap 95% CI over seeds, {n_resamples} resamples"})
    ds["best_local"] = ("regime", strings([b[0] for b in best]))
    ds["best_target"] = ("regime", strings([b[1] for b in best]))
    for k in ("oneshot_done", "finetune_done"):  # kept so a rerun after an interrupted final write resumes
        ds[k] = (cube, np.asarray(pg[k][...], bool))
    ds["base_accuracy"] = ((), base_acc, {"units": "%", "description": "unpruned accuracy on the same images"})
    ds["base_loss"] = ((), base_loss, {"units": "nats"})
    if taylor_unit is not None:
        ds["taylor"] = ("unit", taylor_unit, {"units": "loss x weight", "description": "sum |w * dL/dw| per filter "
                        f"over {config['taylor_images']} calibration images (one accumulated gradient)"})
        ds = ds.assign_coords(layer=("unit", strings(m["layer"].values)),
                              channel=("unit", np.asarray(m["channel"].values, np.int64)))
    ds.attrs.update({"config": store._jsonable(config), "eval": einfo, "full_macs": int(full),
                     "prunable_layers": list(plan.prunable), "followers": list(plan.followers),
                     "macs_accounting": "traced dataflow" if plan.flow.traced else "layer graph only",
                     "level": "channel sparsity: fraction of the prunable channels removed (>= 1 kept per layer)",
                     "removal": "masking: pruned channels silenced as a lesion (post-BN zero), consumers' input "
                                "slices counted as removed; residual stream channels live while any producer keeps "
                                "them; depthwise/grouped convs follow their inputs",
                     "seed_effect": "random scores and fine-tuning order; other one-shot cells are shared"})
    return ds


def _contrasts(methods, auc, n_resamples):
    local = [mm for mm in methods if sc.AXIS[mm] == "local"]
    target = [mm for mm in methods if sc.AXIS[mm] == "target"]
    names = ["best_local-best_target", "best_local-magnitude"] + [f"{mm}-magnitude" for mm in local]
    diffs = np.full((auc.shape[0], len(names), auc.shape[2]), np.nan)
    out = np.full((auc.shape[0], len(names), 3), np.nan)
    best = []
    idx = {mm: i for i, mm in enumerate(methods)}
    for r in range(auc.shape[0]):
        mean = {mm: float(np.mean(auc[r, idx[mm]][np.isfinite(auc[r, idx[mm]])]))
                if np.isfinite(auc[r, idx[mm]]).any() else np.nan for mm in methods}
        bl = max(local, key=lambda k: -np.inf if np.isnan(mean[k]) else mean[k]) if local else ""
        bt = max(target, key=lambda k: -np.inf if np.isnan(mean[k]) else mean[k]) if target else ""
        best.append((bl, bt))
        pairs = [(bl, bt), (bl, "magnitude")] + [(mm, "magnitude") for mm in local]
        for j, (a, b) in enumerate(pairs):
            if a in idx and b in idx:
                diffs[r, j] = auc[r, idx[a]] - auc[r, idx[b]]
                out[r, j] = curves.bootstrap_ci(diffs[r, j], n_resamples=n_resamples, seed=r)
    return names, diffs, out, best
