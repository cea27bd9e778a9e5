"""FLOPs-matched pruning (METHOD §7): local-axis, target-axis and baseline scores at matched MACs, into `/pruning`.

One unit per (method, level, seed) cell: its one-shot evaluation, then its fine-tune, each written before its done
flag, so a killed sweep resumes at the unfinished cells, in any order and in any process. Scores that do not depend
on the seed give the same one-shot cell for every seed: a later seed copies the first seed's cell when it is done,
and measures it itself (the same value) when not. Every cell keeps its per-image outcomes (correctness and loss on
each evaluation image, the same images for every cell), and the contrasts' intervals are a paired bootstrap of those
images, nested with the seeds when there are ≥ 3 of them (`chanaxis.uncertainty`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from .. import precision as prec
from .. import store
from .. import uncertainty as unc
from ..capabilities import require
from ..errors import ChanaxisError
from ..evaluation import evaluate_images, model_forward, module_forward, tensor_batches
from ..params import Params, param
from ..progress import progress_bar
from ..stage import Context, Stage, Unit, api, run_stage
from . import curves
from . import scores as sc
from .common import (checked_model, eval_indices, load_eval_images, metrics_layers, metrics_table,
                     require_metrics, strings)
from .finetune import finetune, taylor_scores
from .masks import PruningPlan

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SEEDS = (42, 123, 456, 789, 1011)
REGIMES = ("oneshot", "finetuned")
CELL_VARS = ("macs_retained", "channel_sparsity", "acc_oneshot", "loss", "acc_finetuned", "loss_finetuned")
ONESHOT_VARS = ("macs_retained", "channel_sparsity", "acc_oneshot", "loss")
# per-image outcomes of every cell on the evaluation images (the paired image bootstrap resamples them)
IMAGE_VARS = {"oneshot": ("correct_oneshot", "loss_oneshot_image"),
              "finetuned": ("correct_finetuned", "loss_finetuned_image")}


@dataclass(frozen=True)
class PruneParams(Params):
    methods: tuple[str, ...] | None = param(None, "pruning scores compared", choices=sc.METHODS,
                                            none="all methods")
    allocation: str | None = param(None, "how a level's removals are spread over the layers", choices=sc.ALLOCATIONS,
                                   none="global for plain/residual CNNs, uniform for MobileNetV2/ConvNeXt")
    levels: tuple[float, ...] = param(LEVELS, "channel sparsities: share of the prunable channels removed",
                                      "fraction", gt=0, lt=1)
    finetune_epochs: int = param(5, "Adam epochs after pruning (0: one-shot only)", "epochs", ge=0)
    finetune_batches: int = param(200, "at most this many batches per fine-tuning epoch", "batches", ge=1)
    seeds: tuple[int, ...] = param(SEEDS, "seeds of the random score and of the fine-tuning order")
    eval_images: int | None = param(2000, "images of the evaluation split (a seeded subset)", "images", ge=1,
                                    none="all images of the evaluation split")
    batch_size: int = param(128, "images per evaluation and fine-tuning batch", "images", ge=1)
    lr: float = param(1e-4, "Adam learning rate of the fine-tune", gt=0)
    taylor_images: int = param(1024, "calibration images of the taylor score (one accumulated gradient)", "images",
                               ge=1)
    n_resamples: int = param(10_000, "bootstrap resamples of the paired AUC differences (evaluation images, "
                                    "and seeds from 3 on)", "resamples", ge=1)
    precision: str = param("fp32", "precision of the evaluation passes that feed the results (bf16: autocast, "
                           "torch models only)", choices=("fp32", "bf16"))
    finetune_precision: str = param("auto", "fine-tuning precision: bf16 autocast with channels_last memory, or "
                                    "fp32 (auto: bf16 on CUDA, fp32 elsewhere)", choices=prec.CHOICES)

    def validate(self) -> None:
        # one order for every entry point: methods and seeds as first given, levels ascending; no repeats
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "levels", tuple(sorted(set(self.levels))))
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(self.seeds)))


class PruneStage(Stage):
    """Pruning (METHOD §7): Taylor scores in `prepare`, one unit per (method, level, seed) cell, and `finish`
    assembles /pruning (AUC over the common MACs interval, paired contrasts). `ctx.inputs`: optional `overwrite`."""

    name = "prune"
    needs = ("metrics",)
    Params = PruneParams
    presets = {
        "quick": PruneParams(methods=("input_capture", "hull", "task_info", "composite_target", "magnitude",
                                      "random"), levels=(0.1, 0.2, 0.35, 0.5), finetune_epochs=1,
                             finetune_batches=40, seeds=(42, 123), eval_images=500, n_resamples=10_000),
        "paper": PruneParams(methods=None, levels=LEVELS, finetune_epochs=5, finetune_batches=200, seeds=SEEDS,
                             eval_images=None, n_resamples=10_000),
    }
    help = "prune at matched MACs with each score and compare the curves (METHOD §7)"
    status_key = node = store.PRUNING  # the store's node and status key predate the stage's name

    def config(self, model) -> dict:
        p = self.params
        return {"methods": list(p.methods or sc.METHODS), "allocation": p.allocation or
                sc.default_allocation(model.graph), "levels": list(p.levels), "seeds": list(p.seeds),
                "finetune_epochs": p.finetune_epochs, "finetune_batches": p.finetune_batches, "lr": p.lr,
                "optimizer": "adam", "eval_images": p.eval_images, "taylor_images": p.taylor_images,
                "batch_size": p.batch_size, "n_resamples": p.n_resamples, "precision": p.precision,
                "finetune_precision": prec.resolve(p.finetune_precision, getattr(model, "device", "cpu"))}

    def prepare(self, run, ctx: Context) -> None:
        p = self.params
        grp = store.open_group(run, mode="r+")
        require_metrics(run, grp)
        model = checked_model(run, ctx)
        config = self.config(model)
        if self._needs_taylor(config):
            require(model, "gradients", what="the taylor score (--methods taylor, --allocation taylor_hybrid); pass "
                                             "--methods without taylor and another --allocation")
        if p.finetune_epochs > 0:
            require(model, "gradients", what="fine-tuning; pass --finetune-epochs 0 for one-shot pruning only")
        store.check_stage_config(grp, self.status_key, config, bool(ctx.inputs.get("overwrite")), f"prune {run}",
                                 node=store.PRUNING)
        if self.done(run):
            return
        layer_of = metrics_layers(grp)
        pg = _raw_group(grp, config, len(layer_of), len(self._eval(run, ctx)[1]))
        if self._needs_taylor(config) and not bool(pg.attrs.get("taylor_done")):
            tx, ty = _calibration_images(run, p.taylor_images)
            names = _unique(layer_of)
            with progress_bar(ctx.progress) as bar:  # a gradient pass over the calibration images
                task = bar.add_task("taylor scores", total=len(tx))
                t = taylor_scores(model, tx, ty, names, p.batch_size, step=lambda n: bar.update(task, advance=n))
            pg["taylor"][:] = np.concatenate([t[n] for n in names])
            pg.attrs["taylor_done"] = True
        store.set_status(grp, self.status_key, "running")

    def units(self, run) -> list[Unit]:
        if self.done(run):
            return []
        grp = store.open_group(run)
        pg = grp[store.PRUNING]
        cfg = store.stage_config(grp, "prune", node=store.PRUNING)
        ft = cfg["finetune_epochs"] > 0
        one_done = np.asarray(pg["oneshot_done"][...], bool)
        ft_done = np.asarray(pg["finetune_done"][...], bool)
        one = oneshot_share(cfg, int(pg["correct_oneshot"].shape[-1]))
        out = []
        for mi, mth in enumerate(cfg["methods"]):  # today's order: method, seed, level
            for si, seed in enumerate(cfg["seeds"]):
                for li, level in enumerate(cfg["levels"]):
                    cell = (mi, li, si)
                    todo = (not one_done[cell], bool(ft and not ft_done[cell]))
                    if any(todo):  # work: the share of the cell still to do (a whole cell is 1 on the bar)
                        out.append(Unit(f"cell/{mth}/{level}/{seed}", cell,
                                        work=one * todo[0] + (1 - one) * todo[1]))
        return out

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        """One cell: the masked network's one-shot accuracy and loss, then (when asked) its fine-tuned ones."""
        p = self.params
        mi, li, si = unit.data
        model = checked_model(run, ctx)
        cfg = self.config(model)
        mth, level, seed = cfg["methods"][mi], cfg["levels"][li], cfg["seeds"][si]
        plan = self._plan(run, ctx)
        x, y, _, _ = self._eval(run, ctx)
        keep = sc.allocate(self._scores(run, ctx, mth, seed), level, cfg["allocation"], self._taylor_layers(run, ctx))
        eff = plan.effective(keep)
        pg = store.open_group(run, mode="r+")[store.PRUNING]
        cell = (mi, li, si)
        if not pg["oneshot_done"][cell]:
            if mth != "random" and si > 0 and pg["oneshot_done"][mi, li, 0]:
                # a seed-free score: the first seed's cell, its per-image outcomes included
                vals = {k: pg[k][mi, li, 0] for k in ONESHOT_VARS + IMAGE_VARS["oneshot"]}
            else:
                with prec.autocast(p.precision, ctx.device, model):
                    loss, acc, loss_img, correct = evaluate_images(model_forward(model, plan.masks(eff)),
                                                                   tensor_batches(x, y, p.batch_size))
                pruned = sum(int((~k).sum()) for k in keep.values())
                vals = {"macs_retained": plan.macs(eff), "channel_sparsity": pruned / plan.n_prunable(),
                        "acc_oneshot": acc, "loss": loss, "correct_oneshot": correct, "loss_oneshot_image": loss_img}
            for k, v in vals.items():
                pg[k][cell] = v
            pg["oneshot_done"][cell] = True  # last: the cell counts only once its values are on disk
            # the bar: the one-shot part of the cell (its fine-tune advances per training step)
            ctx.advance(oneshot_share(cfg, len(x)))
        if p.finetune_epochs > 0 and not pg["finetune_done"][cell]:
            # one step more than the training steps: the fine-tuned evaluation (the unit's end sets it)
            net = finetune(model, eff, ctx.loader(self._train(run, ctx)), p.finetune_epochs, p.finetune_batches,
                           p.lr, seed, p.batch_size, precision=cfg["finetune_precision"],
                           steps=lambda n: ctx.steps(n + 1))
            with prec.autocast(p.precision, ctx.device, model):
                loss_ft, acc_ft, loss_img, correct = evaluate_images(
                    module_forward(net, getattr(model, "device", "cpu")), tensor_batches(x, y, p.batch_size))
            del net
            pg["acc_finetuned"][cell] = acc_ft
            pg["loss_finetuned"][cell] = loss_ft
            pg["correct_finetuned"][cell] = correct
            pg["loss_finetuned_image"][cell] = loss_img
            pg["finetune_done"][cell] = True

    def finish(self, run, ctx: Context) -> str:
        if not self.done(run):
            grp = store.open_group(run, mode="r+")
            pg = grp[store.PRUNING]
            model = checked_model(run, ctx)
            cfg = self.config(model)
            todo = ~np.asarray(pg["oneshot_done"][...], bool)
            if cfg["finetune_epochs"] > 0:
                todo |= ~np.asarray(pg["finetune_done"][...], bool)
            if todo.any():
                raise ChanaxisError(f"the pruning of '{run}' has unfinished cells; rerun the same command to resume")
            x, y, einfo, idx = self._eval(run, ctx)
            with prec.autocast(self.params.precision, ctx.device, model):
                base = evaluate_images(model_forward(model), tensor_batches(x, y, self.params.batch_size))
            plan = self._plan(run, ctx)
            ds = _assemble(pg, cfg, self._metrics(run, ctx), plan.full_macs, base, einfo, idx, plan,
                           self.params.n_resamples, self._taylor(run, ctx))
            store.write_dataset(grp, store.PRUNING, ds)
            store.set_stage_config(grp, "prune", cfg, node=store.PRUNING)
            store.set_status(grp, self.status_key, "done")
        ctx.forget("prune")
        return str(run)

    # ------------------------------------------------------------- per-process state, rebuilt from the store
    @staticmethod
    def _needs_taylor(cfg) -> bool:
        return "taylor" in cfg["methods"] or cfg["allocation"] == "taylor_hybrid"

    def _metrics(self, run, ctx):
        return ctx.memo(("prune", str(run), "metrics"), lambda: metrics_table(run))

    def _plan(self, run, ctx) -> PruningPlan:
        def make():
            plan = PruningPlan(checked_model(run, ctx))
            layers = set(strings(self._metrics(run, ctx)["layer"].values))
            plan.prunable = [n for n in plan.prunable if n in layers]  # a layer without metrics cannot be scored
            return plan
        return ctx.memo(("prune", str(run), "plan"), make)

    def _rows(self, run, ctx) -> dict[str, np.ndarray]:
        """Each prunable layer's /metrics rows."""
        def make():
            layer_of = strings(self._metrics(run, ctx)["layer"].values)
            return {n: np.flatnonzero(layer_of == n) for n in self._plan(run, ctx).prunable}
        return ctx.memo(("prune", str(run), "rows"), make)

    def _taylor(self, run, ctx):
        """Per /metrics row Taylor scores (stored by `prepare`), or None when no method needs them."""
        def make():
            if not self._needs_taylor(self.config(checked_model(run, ctx))):
                return None
            return np.asarray(store.open_group(run)[store.PRUNING]["taylor"][...], np.float64)
        return ctx.memo(("prune", str(run), "taylor"), make)

    def _taylor_layers(self, run, ctx):
        t = self._taylor(run, ctx)
        return None if t is None else {n: t[r] for n, r in self._rows(run, ctx).items()}

    def _scores(self, run, ctx, method: str, seed: int) -> dict[str, np.ndarray]:
        def make():
            s = sc.score(method, self._metrics(run, ctx), seed=seed, taylor=self._taylor(run, ctx))
            return {n: s[r] for n, r in self._rows(run, ctx).items()}
        return ctx.memo(("prune", str(run), "score", method, seed), make)

    def _eval(self, run, ctx):
        """The evaluation images (x, y), their description and their indices in the evaluation split: the same
        seeded subset for every cell, in every process, so per-image outcomes are paired across cells."""
        def make():
            from ..reload import dataset_from_store
            h = dataset_from_store(run, split="eval")
            x, y, info = load_eval_images(run, self.params.eval_images, handle=h, ctx=ctx)
            return x, y, info, eval_indices(len(h.dataset), self.params.eval_images)
        return ctx.memo(("prune", str(run), "eval", self.params.eval_images), make)

    def _train(self, run, ctx):
        from ..reload import dataset_from_store
        return ctx.memo(("prune", str(run), "train"),
                        lambda: dataset_from_store(run, split="train", transform="train").dataset)


def prune(run, *, device: str = "cpu", model=None, progress: bool = True, overwrite: bool = False,
          loader_workers: int | None = None, scheduler=None, workers: int | None = None, **params) -> str:
    """Prune the model of the run store at `run` with each method at each channel sparsity; fills `/pruning`;
    resumable; returns the path. `model`: the store's model when the store cannot rebuild it (an nn.Module);
    `overwrite` redoes a /pruning made with other parameters."""
    stage = PruneStage(**params)
    ctx = Context(device=getattr(model, "device", device), progress=progress, model=model, overwrite=overwrite,
                  loader_workers=loader_workers, scheduler=scheduler, workers=workers)
    return run_stage(stage, run, ctx)


api(PruneStage, prune)


def oneshot_share(cfg: dict, n_images: int) -> float:
    """The one-shot evaluation's share of a cell's time on the progress bar (a cell counts 1): its forward of the
    `n_images` evaluation images, against the fine-tune's training steps (a step ~ 3 forwards per image, at most
    `finetune_batches` batches per epoch) and its own evaluation; 1 without fine-tuning."""
    if cfg["finetune_epochs"] <= 0:
        return 1.0
    steps = 3 * cfg["finetune_epochs"] * cfg["finetune_batches"] * cfg["batch_size"]
    return n_images / (2 * n_images + steps)


def no_common_interval(ds: xr.Dataset, regime: str) -> bool:
    """Whether the regime was measured but its methods' curves share no MACs-reduction interval (no AUC)."""
    acc = ds["acc_oneshot" if regime == "oneshot" else "acc_finetuned"].values
    lo, hi = ds["auc_interval"].sel(regime=regime).values
    return bool(np.isfinite(acc).any() and not (lo <= hi))


def _unique(a):
    return list(dict.fromkeys(a))


def _calibration_images(run, n):
    """The first `n` calibration images of the store (its captured split, evaluation transform)."""
    from ..reload import dataset_from_store
    grp = store.open_group(run)
    idx = np.asarray(grp[store.samples_array("dataset_index")][...])[:n]
    ds = dataset_from_store(run).dataset
    items = [ds[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _raw_group(grp, config, n_units, n_images):
    """The raw cell arrays the units fill, one chunk per cell (units never share one)."""
    shape = (len(config["methods"]), len(config["levels"]), len(config["seeds"]))
    dims = ["method", "level", "seed"]
    if store.PRUNING in grp and "oneshot_done" in grp[store.PRUNING]:
        pg = grp[store.PRUNING]
        if "correct_oneshot" not in pg:  # begun by a chanaxis that kept no per-image outcomes: redo its cells
            _image_arrays(pg, shape, dims, n_images)
            for k in ("oneshot_done", "finetune_done"):
                pg[k][...] = False
        return pg
    pg = grp.require_group(store.PRUNING)
    pg.attrs["config"] = store.jsonable(config)  # on this handle: later writes through it keep the config
    # one chunk per cell in every array the units write: cells written at once by several processes (a
    # cluster's workers) never share a chunk, whose read-modify-write would lose one of them
    for k in CELL_VARS:
        store.new_array(pg, k, shape, dims, "float64", chunks=(1, 1, 1), fill_value=np.nan)
    for k in ("oneshot_done", "finetune_done"):
        store.new_array(pg, k, shape, dims, "bool", chunks=(1, 1, 1))
    _image_arrays(pg, shape, dims, n_images)
    store.new_array(pg, "taylor", (n_units,), ["unit"], "float64")[...] = np.nan
    return pg


def _image_arrays(pg, shape, dims, n_images):
    for correct, loss in IMAGE_VARS.values():
        store.new_array(pg, correct, shape + (n_images,), dims + ["image"], "bool", chunks=(1, 1, 1, n_images))
        store.new_array(pg, loss, shape + (n_images,), dims + ["image"], "float32", chunks=(1, 1, 1, n_images))


def _assemble(pg, config, m, full, base, einfo, image_index, plan, n_resamples, taylor_unit) -> xr.Dataset:
    methods, levels, seeds = config["methods"], config["levels"], config["seeds"]
    base_loss, base_acc, base_loss_img, base_correct = base
    raw = {k: np.asarray(pg[k][...], np.float64) for k in CELL_VARS}
    regimes = [r for r in REGIMES if r == "oneshot" or config["finetune_epochs"] > 0]
    per_image = {k: np.asarray(pg[k][...]) for r in regimes for k in IMAGE_VARS[r]}
    ds = xr.Dataset(coords={"method": strings(methods), "level": np.asarray(levels, np.float64),
                            "seed": np.asarray(seeds, np.int64),
                            "axis": ("method", strings([sc.AXIS[mm] for mm in methods])),
                            "image": ("image", np.asarray(image_index, np.int64),
                                      {"description": "index in the evaluation split of each evaluation image (the "
                                                      "same seeded subset for every cell)"})})
    cube = ("method", "level", "seed")
    ds["macs_retained"] = (cube, raw["macs_retained"], {"units": "MACs", "description": "analytic MACs per image "
                           "from the effective kept in/out channels of every conv and linear (classifier included)",
                           "full_macs": int(full)})
    ds["macs_retained_pct"] = (cube, 100 * raw["macs_retained"] / full, {"units": "%"})
    ds["channel_sparsity"] = (cube, raw["channel_sparsity"], {"units": "1", "description": "pruned share of "
                              "the prunable channels (depthwise/grouped followers not counted)"})
    ds["acc_oneshot"] = (cube, raw["acc_oneshot"], {"units": "%", "description": "accuracy of the masked network, "
                         "no fine-tuning"})
    ds["loss"] = (cube, raw["loss"], {"units": "nats", "description": "mean cross-entropy, one-shot"})
    ds["acc_finetuned"] = (cube, raw["acc_finetuned"], {"units": "%", "description": "after Adam fine-tuning with "
                           "masks re-applied after each step (NaN: not run)"})
    ds["loss_finetuned"] = (cube, raw["loss_finetuned"], {"units": "nats"})
    cells = cube + ("image",)
    for r in regimes:
        cname, lname = IMAGE_VARS[r]
        net = "masked network, no fine-tuning" if r == "oneshot" else "fine-tuned masked network"
        ds[cname] = (cells, per_image[cname].astype(bool), {
            "long_name": f"per-image correctness, {r}", "units": "1", "description": f"whether the {net} "
            f"classifies each evaluation image correctly; acc_{r} = 100 · mean over image"})
        ds[lname] = (cells, per_image[lname].astype(np.float32), {
            "long_name": f"per-image cross-entropy, {r}", "units": "nats", "description": f"cross-entropy of the "
            f"{net} on each evaluation image (float32); {'loss' if r == 'oneshot' else 'loss_finetuned'} = mean "
            "over image"})
    ds["correct_base"] = ("image", np.asarray(base_correct, bool), {
        "long_name": "per-image correctness, unpruned", "units": "1"})
    ds["loss_base_image"] = ("image", np.asarray(base_loss_img, np.float32), {
        "long_name": "per-image cross-entropy, unpruned", "units": "nats"})
    reduction = 1 - raw["macs_retained"] / full
    ds["macs_reduction"] = (cube, reduction, {"units": "1", "description": "1 - macs_retained / full MACs"})
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
    ds["auc_interval"] = (("regime", "bound"), bounds, {"units": "1", "description": "fraction of MACs removed"})
    ds = ds.assign_coords(regime=strings(REGIMES), bound=strings(["low", "high"]))
    weights = np.full((len(REGIMES), len(methods), len(seeds), len(levels)), np.nan)  # each level's share of auc
    for ri in range(len(REGIMES)):
        if np.isfinite(bounds[ri]).all():
            for i in range(len(methods)):
                for s in range(len(seeds)):
                    weights[ri, i, s] = curves.auc_weights(reduction[i, :, s], *bounds[ri])
    correct = [per_image.get(IMAGE_VARS[r][0]) for r in REGIMES]
    names, diffs, stats_, resampled, best = _contrasts(methods, auc, correct, weights, n_resamples)
    ds = ds.assign_coords(contrast=strings(names))
    ds["contrast_diff"] = (("regime", "contrast", "seed"), diffs, {"units": "%",
                           "description": "paired per-seed AUC difference"})
    interval = unc.describe(len(seeds), len(image_index), n_resamples)
    what = {"contrast_mean": "mean over seeds of the paired AUC difference (from the per-image outcomes)",
            "contrast_ci_low": f"lower bound of the {interval} (NaN: no interval, contrast_resamples says why)",
            "contrast_ci_high": f"upper bound of the {interval} (NaN: no interval, contrast_resamples says why)"}
    for j, k in enumerate(what):
        ds[k] = (("regime", "contrast"), stats_[..., j], {"units": "%", "description": what[k],
                                                          "interval": interval})
    ds["contrast_resamples"] = (("regime", "contrast"), np.asarray(resampled.tolist(), dtype=str), {
        "long_name": "what the contrast's interval resamples", "units": "1", "description": "the interval's "
        f"resampling ({interval}), or, where contrast_ci_low/high are NaN, why there is no interval"})
    ds["best_local"] = ("regime", strings([b[0] for b in best]))
    ds["best_target"] = ("regime", strings([b[1] for b in best]))
    for k in ("oneshot_done", "finetune_done"):  # kept so a rerun after an interrupted final write resumes
        ds[k] = (cube, np.asarray(pg[k][...], bool))
    ds["base_accuracy"] = ((), base_acc, {"units": "%", "description": "unpruned accuracy on the same images"})
    ds["base_loss"] = ((), base_loss, {"units": "nats"})
    if taylor_unit is not None:
        ds["taylor"] = ("unit", taylor_unit, {"units": "nats", "description": "sum |w * dL/dw| per filter "
                        f"over {config['taylor_images']} calibration images (one accumulated gradient)"})
        ds = ds.assign_coords(layer=("unit", strings(m["layer"].values)),
                              channel=("unit", np.asarray(m["channel"].values, np.int64)))
    ds.attrs.update({"config": store.jsonable(config), "eval": einfo, "full_macs": int(full),
                     "contrast_interval": interval,
                     "prunable_layers": list(plan.prunable), "followers": list(plan.followers),
                     "macs_accounting": "traced dataflow" if plan.flow.traced else "layer graph only",
                     "level": "channel sparsity: fraction of the prunable channels removed (>= 1 kept per layer)",
                     "removal": "masking: pruned channels silenced as a lesion (post-BN zero), consumers' input "
                                "slices counted as removed; residual stream channels live while any producer keeps "
                                "them; depthwise/grouped convs follow their inputs",
                     "seed_effect": "random scores and fine-tuning order; other one-shot cells are shared"})
    return ds


def _contrasts(methods, auc, correct, weights, n_resamples):
    """The paired contrasts of each regime: best local − best target, best local − magnitude, each local − magnitude.

    Estimates and intervals come from the per-image outcomes (`correct[r]`: method × level × seed × image, None when
    the regime was not run) through the AUC's per-level weights (`weights[r]`: method × seed × level): a paired
    bootstrap of the evaluation images, nested with the seeds from `uncertainty.MIN_SEEDS` on (`uncertainty`)."""
    local = [mm for mm in methods if sc.AXIS[mm] == "local"]
    target = [mm for mm in methods if sc.AXIS[mm] == "target"]
    names = ["best_local-best_target", "best_local-magnitude"] + [f"{mm}-magnitude" for mm in local]
    diffs = np.full((auc.shape[0], len(names), auc.shape[2]), np.nan)
    out = np.full((auc.shape[0], len(names), 3), np.nan)
    resampled = np.full((auc.shape[0], len(names)), unc.NOT_MEASURED, dtype=object)
    best = []
    idx = {mm: i for i, mm in enumerate(methods)}
    for r in range(auc.shape[0]):
        mean = {mm: float(np.mean(auc[r, idx[mm]][np.isfinite(auc[r, idx[mm]])]))
                if np.isfinite(auc[r, idx[mm]]).any() else np.nan for mm in methods}
        bl = max(local, key=lambda k: -np.inf if np.isnan(mean[k]) else mean[k]) if local else ""
        bt = max(target, key=lambda k: -np.inf if np.isnan(mean[k]) else mean[k]) if target else ""
        best.append((bl, bt))
        pairs = [(bl, bt), (bl, "magnitude")] + [(mm, "magnitude") for mm in local]
        todo, zs = [], []
        # method × seed × level × image
        c = None if correct[r] is None else np.asarray(correct[r], np.float64).transpose(0, 2, 1, 3)
        for j, (a, b) in enumerate(pairs):
            if a in idx and b in idx:
                diffs[r, j] = auc[r, idx[a]] - auc[r, idx[b]]
                if c is None:
                    continue
                if not (np.isfinite(weights[r, idx[a]]).all() and np.isfinite(weights[r, idx[b]]).all()):
                    resampled[r, j] = "no AUC: the curves share no common MACs-reduction interval"
                    continue
                zs.append(100 * (unc.curve_contributions(c[idx[a]], weights[r, idx[a]])
                                 - unc.curve_contributions(c[idx[b]], weights[r, idx[b]])))
                todo.append(j)
        if todo:  # one set of resamples for every contrast of the regime
            for j, iv in zip(todo, unc.bootstrap_mean(np.stack(zs), n_resamples=n_resamples, seed=r)):
                out[r, j] = iv.estimate, iv.low, iv.high
                resampled[r, j] = iv.resampled
    return names, diffs, out, resampled, best
