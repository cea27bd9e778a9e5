"""The training trajectory (METHOD §5): the two axes at every checkpoint, on the same calibration images.

Each checkpoint is one unit of the stage: it gets its own run store ``<work>/epoch_XXXX.zarr`` (capture + local/target
metrics, + the gradient geometry when asked), kept and skipped once done, so a new checkpoint costs only itself. The
architecture is built once per process and each checkpoint's weights are loaded into it. The trajectory store
(``RUN_DIR/trajectory.zarr``) is then assembled from them: ``/metrics`` gains a ``checkpoint`` dimension and
``/trajectory`` (checkpoint × layer) holds the cross-axis couplings, rank stability against the last checkpoint and
accuracies. Assembly reads only the small per-unit tables, so redoing it when a checkpoint arrives is cheap.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import store
from ..checkpoints import load_into, read_state_dict
from ..errors import ChanaxisError
from ..locations import absolute, location
from ..estimators.structure import spearman_matrix
from ..params import Params, as_pairs, check_keywords, param
from ..progress import progress_bar
from .. import stage as stages
from ..stage import Context, Stage, Unit, api, run_stage
from ..checkpoints import MANIFEST, read_manifest

# cross-axis pairs: every local metric against every target metric (signal_power and weight_norm_sq are left out:
# within a layer they rank exactly as input_capture and magnitude do)
LOCAL_AXIS = ("input_capture", "peer_overlap", "peer_r2_full", "peer_r2_top8", "hull_score", "magnitude")
TARGET_AXIS = ("task_info", "redundancy_t", "synergy", "unique_t")
CKPT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
_SKIP_NAMES = {"state", "best", "last"}
STAGE = "trajectory_checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    path: Path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def epoch_of(path: Path) -> int | None:
    """The epoch a file name carries (its last number: epoch_3.pt, epoch_0003.pt, ckpt-3.pth), else None."""
    nums = re.findall(r"\d+", path.stem)
    return int(nums[-1]) if nums and path.stem.lower() not in _SKIP_NAMES else None


def find_checkpoints(run_dir: str | Path) -> tuple[dict | None, list[Checkpoint]]:
    """(training manifest or None, checkpoints by epoch) of a training run or a folder of state dicts."""
    d = location(run_dir)
    if not d.is_dir():
        raise ChanaxisError(f"'{d}' is not a folder; give a training run folder (chanaxis train --out) or a folder "
                            "of state dicts named with epoch numbers (epoch_3.pt)")
    if (d / MANIFEST).exists():
        m = read_manifest(d)
        ck = []
        for e, rel in sorted(m["checkpoints"].items(), key=lambda kv: int(kv[0])):
            p = d / rel
            if not p.is_file():
                raise ChanaxisError(f"checkpoint '{p}' listed in {d / MANIFEST} is missing; restore it or rerun "
                                    "`chanaxis train` with the same options")
            ck.append(Checkpoint(int(e), p))
        if not ck:
            raise ChanaxisError(f"the training run '{d}' has no checkpoints yet; let `chanaxis train` run first")
        return m, ck
    found: dict[int, Path] = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in CKPT_SUFFIXES and (e := epoch_of(p)) is not None:
            if e in found:
                raise ChanaxisError(f"two checkpoints for epoch {e} in '{d}': '{found[e].name}' and '{p.name}'; "
                                    "keep one")
            found[e] = p
    if not found:
        raise ChanaxisError(f"no checkpoints in '{d}': expected state dicts named with epoch numbers "
                            f"({', '.join(CKPT_SUFFIXES)}, e.g. epoch_3.pt or ckpt-0003.pth)")
    return None, [Checkpoint(e, found[e]) for e in sorted(found)]


def _check_consistent(own: dict | None, ckpts: list[Checkpoint], model_name: str) -> None:
    """Every checkpoint must have the tensors of the first (and fit ``own`` shapes when given): else name the file.

    Fit to a model given by name is checked when each checkpoint is loaded (load_into names the file), so that a
    rerun whose checkpoints are all done builds no model at all.
    """
    first = None
    for c in ckpts:
        sd = {k: tuple(v.shape) for k, v in read_state_dict(c.path).items()}
        if first is None:
            bad = [k for k in (own or {}) if k not in sd or sd[k] != own[k]]
            if bad:
                k = bad[0]
                got = sd.get(k, "missing")
                raise ChanaxisError(f"checkpoint '{c.path}' does not fit model {model_name}: {k} is {got}, the model "
                                    f"has {own[k]}; check --model (and the dataset's classes and image size)")
            first = (c, sd)
        elif sd != first[1]:
            diff = sorted(set(sd) ^ set(first[1])) or sorted(k for k in sd if sd[k] != first[1][k])
            k = diff[0]
            raise ChanaxisError(f"mismatched checkpoints: '{c.path}' differs from '{first[0].path.name}' at {k} "
                                f"({sd.get(k, 'missing')} vs {first[1].get(k, 'missing')}); keep checkpoints of one "
                                "model in the folder")


# ------------------------------------------------------------------------------------------------------------ stage

@dataclass(frozen=True)
class TrajectoryParams(Params):
    n_calibration: int = param(5000, "calibration images, the same seeded subset at every checkpoint (all when the "
                               "split has fewer)", "images", ge=2)
    spatial_samples: int = param(16, "spatial positions sampled per image and layer (all when H·W is smaller)",
                                 "positions", ge=1)
    seed: int = param(0, "seed of the calibration subset and of the spatial positions")
    split: str = param("train", "dataset split the calibration images come from")
    dtype: str = param("float32", "storage type of the sampled activations", choices=("float32", "float16"))
    chunk_images: int = param(128, "images per capture batch and store chunk", "images", ge=1,
                              aliases=("--batch-size",))
    grad_cos: bool = param(True, "also run the gradient-geometry pass (METHOD §4) at every checkpoint")
    geometry_images: int = param(1024, "calibration images of the gradient-geometry pass (grad_cos)", "images", ge=1)
    metrics_params: tuple[tuple[str, Any], ...] | None = param(
        None, "metrics parameters (chanaxis.metrics) used at every checkpoint", none="the metrics defaults", cli=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics_params", as_pairs(self.metrics_params))  # a dict is accepted, kept as pairs
        super().__post_init__()

    def validate(self) -> None:
        MetricsParams = stages.get("metrics").Params
        given = dict(self.metrics_params or ())
        if "only" in given:
            raise ChanaxisError("the trajectory computes the local and target metrics at every checkpoint; drop "
                                "'only' from metrics_params")
        check_keywords(MetricsParams, given, "metrics parameter")


def work_dir(out: Path) -> Path:
    """Where the per-checkpoint stores of the trajectory store `out` lie."""
    return out.with_suffix("") if out.suffix == ".zarr" else out.with_name(out.name + "_checkpoints")


class TrajectoryStage(Stage):
    """The trajectory (METHOD §5) into the store `run`: one unit per checkpoint not yet done (capture + local/target
    metrics, + grad_cos, into the checkpoint's own store), assembled in `finish`.

    `ctx.inputs`: `run_dir` (a `chanaxis train` folder or a folder of state dicts named with epoch numbers), and
    `dataset` and `model_spec` (a timm name, a `Model` or an nn.Module), which a training folder names itself."""

    name = "trajectory"
    needs = ("train",)
    study_path = "trajectory.zarr"
    Params = TrajectoryParams
    presets = {"quick": TrajectoryParams(n_calibration=400), "paper": TrajectoryParams()}
    help = "capture + metrics at every checkpoint of a training run, in one store"

    def options(self, dataset: str) -> dict:
        """What a per-checkpoint store must have been made with to be reused."""
        p = self.params
        return {"dataset": dataset, "split": p.split, "n_calibration": p.n_calibration,
                "spatial_samples": p.spatial_samples, "seed": p.seed, "dtype": p.dtype,
                "metrics_params": dict(p.metrics_params or ())}

    def job(self, run, ctx: Context) -> "_Job":
        return ctx.memo(("trajectory", str(run)), lambda: _Job(location(run), ctx, self))

    def prepare(self, run, ctx: Context) -> None:
        job = self.job(run, ctx)
        p = self.params
        cfg = {"source": str(absolute(job.run_dir)), "model": job.name, **job.opts, "grad_cos": p.grad_cos,
               "geometry_images": p.geometry_images if p.grad_cos else None}
        grp = store.create_or_resume(run, cfg)
        store.set_status(grp, self.name, "running")
        job.work.mkdir(parents=True, exist_ok=True)

    def units(self, run) -> list[Unit]:
        cfg = store.run_config(run)
        _, ckpts = find_checkpoints(cfg["source"])
        opts, work = self.options(cfg["dataset"]), work_dir(location(run))
        return [Unit(f"checkpoint/{c.epoch}", c) for c in ckpts
                if not _checkpoint_done(c, work / f"epoch_{c.epoch:04d}.zarr", opts) or self.geometry_due(work, c)]

    def geometry_due(self, work: Path, c: Checkpoint) -> bool:
        if not self.params.grad_cos:
            return False
        g = store.open_group(work / f"epoch_{c.epoch:04d}.zarr")
        geo = g["trajectory_geometry"].attrs.get("images_asked") if "trajectory_geometry" in g else None
        return geo != self.params.geometry_images

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        """Capture + metrics (+ geometry) of one checkpoint into its own store; each part skipped once done."""
        job, p, c = self.job(run, ctx), self.params, unit.data
        path = job.work / f"epoch_{c.epoch:04d}.zarr"
        model = None
        if not _checkpoint_done(c, path, job.opts):
            sha = _file_sha256(c.path)
            model = job.model_at(c)
            # the capture and metrics stages, through the registry (a stage never imports another's module)
            capture = stages.get("capture")(split=p.split, n_calibration=p.n_calibration,
                                            spatial_samples=p.spatial_samples, seed=p.seed, dtype=p.dtype,
                                            chunk_images=p.chunk_images)
            stages.run_stage(capture, path, Context(
                device=ctx.device, progress=ctx.progress, model=model, data_root=job.root, dataset=job.opts["dataset"],
                loader_workers=ctx.loader_workers,
                extra_config={"trajectory": {"epoch": c.epoch, "checkpoint": str(absolute(c.path))}}))
            metrics = stages.get("metrics")(only=("local", "target"), **job.opts["metrics_params"])
            stages.run_stage(metrics, path, Context(device=ctx.device, progress=ctx.progress, model=model,
                                                    loader_workers=ctx.loader_workers))
            g = store.open_group(path, mode="r+")
            g.attrs.update({"checkpoint_sha256": sha, "trajectory_options": job.opts})
            store.set_status(g, STAGE, "done")
        if self.geometry_due(job.work, c):
            with progress_bar(ctx.progress) as bar:  # a row of the stage's display, gone once done
                _geometry(path, store.open_group(path, mode="r+"), model or job.model_at(c), p.geometry_images,
                          bar, ctx.loader_workers)

    def finish(self, run, ctx: Context) -> str:
        job = self.job(run, ctx)
        grp = store.open_group(run, mode="r+")
        stores = {c.epoch: job.work / f"epoch_{c.epoch:04d}.zarr" for c in job.ckpts}
        _assemble(grp, location(run), stores, job.manifest, with_geometry=self.params.grad_cos)
        store.set_status(grp, self.name, "done")
        ctx.forget("trajectory")
        return str(run)


class _Job:
    """What every checkpoint of one trajectory shares: the checkpoints, dataset, options and the one model."""

    def __init__(self, out: Path, ctx: Context, stage: TrajectoryStage):
        from ..data import get_card
        from ..registry import load_model
        self.run_dir = location(ctx.inputs["run_dir"])
        self.manifest, self.ckpts = find_checkpoints(self.run_dir)
        manifest, dataset, model = self.manifest, ctx.inputs.get("dataset"), ctx.inputs.get("model_spec")
        spec = dict(manifest["model"]) if manifest else {}
        self.root = ctx.data_root
        if dataset is None:
            if manifest is None:
                raise ChanaxisError(f"'{self.run_dir}' is a folder of state dicts: pass --dataset (the data the "
                                    "model was trained on)")
            dataset = manifest["dataset"]["name"]
            self.root = self.root or manifest["dataset"].get("root")
        card = get_card(dataset)
        if model is None:
            if manifest is None:
                raise ChanaxisError(f"'{self.run_dir}' is a folder of state dicts: pass --model NAME (the "
                                    "architecture of the checkpoints, e.g. resnet18)")
            if spec.get("adapter") != "timm":
                raise ChanaxisError(f"'{self.run_dir}' was trained from a Python nn.Module; pass the same module "
                                    "again (model=...) to compute its trajectory")
            model = spec["name"]
        self.name = model if isinstance(model, str) else getattr(model, "spec", {}).get("name", type(model).__name__)
        num_classes = int(spec.get("num_classes") or card.num_classes)
        image_size = int(spec.get("image_size") or card.image_size)
        init_seed = int(spec.get("init_seed") or 0)
        if isinstance(model, str):  # built on first use: a rerun whose checkpoints are all done builds no model
            self.build = lambda: load_model(model, num_classes=num_classes, image_size=image_size,
                                            init_seed=init_seed, device=ctx.device)
            own = None
        else:
            base = model if hasattr(model, "module") and hasattr(model, "graph") else load_model(
                model, num_classes=num_classes, image_size=image_size, device=ctx.device)
            self.build = lambda: base
            own = {k: tuple(v.shape) for k, v in base.module.state_dict().items()}
        _check_consistent(own, self.ckpts, self.name)
        self.opts = stage.options(card.name)
        self.work = work_dir(out)
        self.model, self.loaded = None, None

    def model_at(self, c: Checkpoint):
        """The one model of this process with the weights of checkpoint `c` (loaded in place, filters re-read)."""
        if self.model is None:
            self.model = self.build()
        if self.loaded != c.path:
            fit = load_into(self.model.module, c.path)  # names the file when it does not fit
            self.model.refresh_graph()
            spec = {**self.model.spec, "checkpoint": str(c.path)}
            if "unexpected_keys" in spec:  # as the adapter records a checkpoint it opens
                spec["unexpected_keys"] = fit["unexpected"]
            self.model.spec = spec
            self.loaded = c.path
        return self.model


def _checkpoint_done(c: Checkpoint, path: Path, opts: dict) -> bool:
    """Whether checkpoint `c`'s store at `path` is complete; one made from other weights or options is an error."""
    if not path.exists():
        return False
    g = store.open_group(path)
    if store.stage_state(g, STAGE) != "done":
        return False
    if g.attrs.get("checkpoint_sha256") != _file_sha256(c.path):
        raise ChanaxisError(f"checkpoint '{c.path}' changed since '{path}' was computed from it; delete "
                            f"'{path}' to recompute that checkpoint")
    if g.attrs.get("trajectory_options") != opts:
        raise ChanaxisError(f"'{path}' was computed with other options ({g.attrs.get('trajectory_options')}"
                            f"); use another --out or delete it")
    return True


def trajectory(run_dir: str | Path, dataset: str | None = None, out: str | Path | None = None, model=None, *,
               device: str = "cpu", progress: bool = True, root: str | None = None,
               loader_workers: int | None = None, scheduler=None, workers: int | None = None, **params) -> str:
    """Capture + local/target metrics at every checkpoint of `run_dir`, assembled into one store; returns its path.

    run_dir: a `chanaxis train` run (its manifest names model, dataset and checkpoints) or a folder of state dicts
    named with epoch numbers (then `model`, a timm name or an nn.Module, and `dataset` are required).
    out: the trajectory store (default RUN_DIR/trajectory.zarr). The calibration images are the same at every
    checkpoint: they depend only on (seed, n_calibration)."""
    stage = TrajectoryStage(**params)
    out = location(out) if out is not None else location(run_dir) / "trajectory.zarr"
    ctx = Context(device=device, progress=progress, data_root=root, run_dir=run_dir, dataset=dataset,
                  loader_workers=loader_workers, scheduler=scheduler, workers=workers,
                  model_spec=model)
    return run_stage(stage, out, ctx)


api(TrajectoryStage, trajectory)


def _geometry(path: Path, g, model, n_images: int, bar, workers: int | None = None) -> None:
    """Per-channel grad_cos (METHOD §4) into ``/trajectory_geometry`` (NaN when the model has no gradients)."""
    from ..geometry import geometry_pass
    layers = [str(x) for x in np.asarray(g[f"{store.GRAPH}/layer"][...])]
    res = geometry_pass(path, g, layers, {"geometry_images": n_images}, model, bar, workers=workers)
    n_units = sum(int(g[store.layer_node(l)].attrs["c_out"]) for l in layers)
    values = np.full(n_units, np.nan) if res is None else np.concatenate([np.asarray(res[l], np.float64)
                                                                         for l in layers])
    ds = xr.Dataset({"grad_cos": ("unit", values)})
    ds["grad_cos"].attrs = {"units": "1", "estimator": "|cos(Sigma_X w, g_T)|, Gaussian linear analysis",
                            "images": int(min(n_images, g[store.samples_array("dataset_index")].shape[0])),
                            "computed": res is not None}
    ds.attrs["images_asked"] = int(n_images)
    store.write_dataset(g, "trajectory_geometry", ds)
    store.consolidate(g)  # the checkpoint's store is done: its consolidated metadata with the new node


# --------------------------------------------------------------------------------------------------------- assembly

def _load_metrics(path: Path, with_geometry: bool) -> xr.Dataset:
    ds = store.read_dataset(path, store.METRICS)
    g = store.open_group(path)
    if with_geometry and "trajectory_geometry" in g:
        geo = store.read_dataset(path, "trajectory_geometry")
        ds["grad_cos"] = ("unit", geo["grad_cos"].values, dict(geo["grad_cos"].attrs))
    return ds


def _pad_slots(parts: list[xr.Dataset]) -> list[xr.Dataset]:
    """Slot dims (hull members, peers) padded with -1 to one width so checkpoints concatenate."""
    out = parts
    for dim in {d for p in parts for d in p.dims if d != "unit"}:
        width = max(p.sizes.get(dim, 0) for p in parts)
        new = []
        for p in out:
            if dim in p.dims and p.sizes[dim] < width:
                p = p.pad({dim: (0, width - p.sizes[dim])}, constant_values=-1)
            new.append(p)
        out = new
    return out


def _per_layer(values: np.ndarray, layer_of_unit: np.ndarray, layers: list[str]):
    return [values[layer_of_unit == l] for l in layers]


def _strs(a) -> list[str]:
    return [str(x) for x in np.asarray(a)]


def _rho(a, b) -> float:
    """Spearman of one metric at two checkpoints; NaN where a side has no spread (no ranking to be stable)."""
    if len(a) < 3:
        return np.nan
    sm = spearman_matrix({"a": a, "b": b})
    return np.nan if sm.constant.any() else float(sm.rho[0, 1])


def _assemble(grp, out: Path, stores: dict[int, Path], manifest: dict | None, with_geometry: bool) -> None:
    epochs = sorted(stores)
    parts = [_load_metrics(stores[e], with_geometry) for e in epochs]
    units = parts[0]
    for e, p in zip(epochs, parts):
        if p.sizes["unit"] != units.sizes["unit"] or _strs(p["layer"]) != _strs(units["layer"]):
            raise ChanaxisError(f"checkpoint of epoch {e} has other layers than epoch {epochs[0]} ('{stores[e]}'); "
                                "a trajectory needs checkpoints of one model")
    parts = _pad_slots(parts)
    met = xr.concat(parts, dim=xr.DataArray(epochs, dims="checkpoint", name="checkpoint"), coords="minimal",
                    compat="override", combine_attrs="override", join="exact")
    met["checkpoint"].attrs = {"units": "epoch", "description": "training epoch of the checkpoint (0 = initialisation)"}
    layer_of_unit = np.asarray(_strs(units["layer"]), dtype=object)
    layers = list(dict.fromkeys(layer_of_unit))
    local = [k for k in LOCAL_AXIS if k in met]
    target = [k for k in TARGET_AXIS if k in met]
    stab = local + target
    nk, nl = len(epochs), len(layers)
    cross = np.full((nk, nl, len(local), len(target)), np.nan)
    stability = np.full((nk, nl, len(stab)), np.nan)
    last = {k: _per_layer(met[k].values[-1], layer_of_unit, layers) for k in stab}
    for i in range(nk):
        cols = {k: _per_layer(met[k].values[i], layer_of_unit, layers) for k in stab}
        for li in range(nl):
            if local and target:
                sm = spearman_matrix({k: cols[k][li] for k in local + target})
                cross[i, li] = sm.rho[:len(local), len(local):] if len(cols[local[0]][li]) >= 3 else np.nan
            for mi, k in enumerate(stab):
                stability[i, li, mi] = _rho(cols[k][li], last[k][li])
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        cross_mean = np.nanmean(cross, axis=1)
        stab_mean = np.nanmean(stability, axis=1)
    tr = xr.Dataset(coords={"checkpoint": ("checkpoint", epochs, {"units": "epoch"}),
                            "layer": np.asarray(layers, dtype=object), "local_metric": local,
                            "target_metric": target, "metric": stab,
                            "axis": ("metric", ["local"] * len(local) + ["target"] * len(target))})
    sp = {"units": "1", "estimator": "within-layer Spearman over the layer's channels"}
    tr["cross_spearman"] = (("checkpoint", "layer", "local_metric", "target_metric"), cross,
                            {**sp, "description": "within-layer Spearman of a local-axis vs a target-axis metric"})
    tr["cross_spearman_mean"] = (("checkpoint", "local_metric", "target_metric"), cross_mean,
                                 {**sp, "description": "layer mean of cross_spearman"})
    if "input_capture" in local and "task_info" in target:
        ix, it = local.index("input_capture"), target.index("task_info")
        tr["coupling_ix_it"] = (("checkpoint", "layer"), cross[:, :, ix, it],
                                {**sp, "description": "within-layer Spearman of input_capture (I_X) vs task_info "
                                                      "(I(T;Y)): the coupling of the two axes"})
        tr["coupling_ix_it_mean"] = ("checkpoint", cross_mean[:, ix, it],
                                     {**sp, "description": "layer mean of coupling_ix_it"})
    tr["rank_stability"] = (("checkpoint", "layer", "metric"), stability,
                            {**sp, "description": f"Spearman of each metric at a checkpoint vs the last checkpoint "
                                                  f"(epoch {epochs[-1]}), within layer; NaN where a side is "
                                                  "constant"})
    tr["rank_stability_mean"] = (("checkpoint", "metric"), stab_mean,
                                 {**sp, "description": "layer mean of rank_stability"})
    _accuracies(tr, stores, epochs, manifest)
    if "grad_cos" in met:
        g = np.array([[np.nanmean(v) if np.isfinite(v).any() else np.nan
                       for v in _per_layer(met["grad_cos"].values[i], layer_of_unit, layers)] for i in range(nk)])
        tr["grad_cos"] = (("checkpoint", "layer"), g, {"units": "1", "description": "layer mean of grad_cos"})
        with _quiet_nanmean():
            tr["grad_cos_mean"] = ("checkpoint", np.nanmean(g, axis=1), {"units": "1",
                                                                         "description": "mean over layers"})
    tr.attrs.update({"last_checkpoint": int(epochs[-1]), "checkpoint_stores": {str(e): str(stores[e])
                                                                                 for e in epochs}})
    met.attrs.update({"checkpoints": [int(e) for e in epochs]})
    if "grad_cos" in met:
        met.attrs["geometry"] = "computed per checkpoint by the trajectory stage (grad_cos)"
    shas = {e: store.open_group(stores[e]).attrs.get("calibration_sha256") for e in epochs}
    if len(set(shas.values())) > 1:  # cannot happen with one seed and n; guards hand-edited stores
        raise ChanaxisError(f"the checkpoint stores used different calibration images ({shas}); delete "
                            f"{out.with_suffix('')} and rerun")
    grp.attrs["calibration_sha256"] = shas[epochs[0]]
    store.write_dataset(grp, "metrics", met)
    store.write_dataset(grp, "trajectory", tr)
    grp.attrs["checkpoints"] = [int(e) for e in epochs]


def _accuracies(tr: xr.Dataset, stores: dict[int, Path], epochs: list[int], manifest: dict | None) -> None:
    hist = {int(h["epoch"]): h for h in (manifest or {}).get("history", [])}
    nan = float("nan")
    tr["eval_acc"] = ("checkpoint", [hist.get(e, {}).get("eval_acc", nan) for e in epochs],
                      {"units": "%", "description": "accuracy on the evaluation split (training manifest)"})
    tr["eval_loss"] = ("checkpoint", [hist.get(e, {}).get("eval_loss", nan) for e in epochs],
                       {"units": "nats", "description": "mean cross-entropy on the evaluation split (manifest)"})
    acc, margin = [], []
    for e in epochs:
        g = store.open_group(stores[e])
        acc.append(100.0 * float(np.mean(np.asarray(g[store.samples_array("correct")][...]))))
        margin.append(float(np.mean(np.asarray(g[store.samples_array("margin")][...], np.float64))))
    tr["calibration_acc"] = ("checkpoint", acc, {"units": "%", "description": "accuracy on the calibration images"})
    tr["calibration_margin"] = ("checkpoint", margin, {"units": "logit",
                                                       "description": "mean logit margin T on the calibration images"})


class _quiet_nanmean:
    """np.nanmean of an all-NaN slice warns; NaN is the honest answer there."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
