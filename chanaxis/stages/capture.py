"""Streaming capture (METHOD §1): calibration images → pre-normalisation channel samples in the run store.

Memory is bounded by one batch: each batch's samples go straight into preallocated, chunk-aligned zarr arrays
(one chunk = one batch of images), written by a background thread while the next batch runs. A boolean per chunk
records completion after all of its arrays are written, so a killed capture resumes at the first unfinished chunk
and yields the same arrays (spatial positions are drawn up front from the seed, not per batch).
"""
from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import integrity, precision, store
from ..data import calibration_indices, load_dataset
from ..errors import ChanaxisError
from ..params import Params, param
from ..sampling import reducer, spatial_positions
from ..stage import Context, Stage, Unit, api, run_stage

WRITE_AHEAD = 2  # chunks computed but not yet written: the writer absorbs a slow write without stalling compute


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """T = z[label] − max_{c≠label} z[c] (METHOD §1); NaN for a one-output model, where no other class exists and
    T (and every target metric) is undefined."""
    z = logits.float()
    if z.shape[1] < 2:
        return torch.full((z.shape[0],), float("nan"))
    own = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).max(1).values
    return own - other


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@dataclass(frozen=True)
class CaptureParams(Params):
    n_calibration: int = param(5000, "calibration images (a seeded subset of the split; all when it has fewer)",
                               "images", ge=2)
    spatial_samples: int = param(16, "spatial positions sampled per image and layer (all when H·W is smaller)",
                                 "positions", ge=1)
    seed: int = param(0, "seed of the calibration subset and of the spatial positions")
    dtype: str = param("float32", "storage type of the sampled activations (float16 halves the store; its effect on "
                       "every metric is measured in bench/README.md)", choices=("float32", "float16"))
    precision: str = param("fp32", "precision of the forward pass (bf16: autocast, torch models only)",
                           choices=("fp32", "bf16"))
    chunk_images: int = param(128, "images per batch and per store chunk (one unit of work)", "images", ge=1,
                              aliases=("--batch-size",))
    split: str = param("train", "dataset split the calibration images come from")
    transform: str = param("eval", "image transform (the card's evaluation pipeline)", choices=("eval",))
    layers: tuple[str, ...] | None = param(None, "layers to capture", none="every conv/linear layer of the graph",
                                           cli=False)


class CaptureStage(Stage):
    """Capture (METHOD §1): calibration images → pre-normalisation channel samples, one unit per image chunk.

    `ctx.inputs`: `dataset` (a card name, an ImageFolder path or a loaded handle), optional `overwrite` and
    `extra_config` (recorded in the store's config)."""

    name = "capture"
    needs = ("train",)
    Params = CaptureParams
    presets = {"quick": CaptureParams(n_calibration=1000), "paper": CaptureParams()}
    help = "stream channel activations on a calibration set into a run store"
    outputs = {
        "samples": {"dataset_index": (("image",), "1"), "label": (("image",), "1"), "margin": (("image",), "logit"),
                    "correct": (("image",), "1"), "logits": (("image", "class"), "logit")},
        "layers/*": {"local": (("sample", "channel"), "activation"), "gap": (("image", "channel"), "activation"),
                     "position": (("sample",), "1"), "weight": (("channel", "fan_in"), "weight")},
    }

    def prepare(self, run, ctx: Context) -> None:
        p = self.params
        store.ensure_writable(run)
        model = ctx.model(run)
        handle = _dataset(ctx, model, p)
        if tuple(model.input_size[1:]) != (handle.image_size, handle.image_size):
            raise ChanaxisError(f"the model expects {model.input_size[1]}×{model.input_size[2]} images but "
                                f"'{handle.name}' gives {handle.image_size}×{handle.image_size}; pass --image-size")
        if model.num_classes != handle.num_classes:
            raise ChanaxisError(f"the model has {model.num_classes} outputs but '{handle.name}' has "
                                f"{handle.num_classes} classes; pass --num-classes {handle.num_classes}")
        idx = calibration_indices(len(handle.dataset), p.n_calibration, p.seed)
        graph = model.graph
        names = list(p.layers or graph.names)
        unknown = [l for l in names if l not in graph]
        if unknown:
            raise ChanaxisError(f"unknown layer '{unknown[0]}'; valid layers: {', '.join(graph.names[:8])}, ...")
        bad = next((l for l in names if not np.isfinite(graph.filters(l)).all()), None)
        if bad is not None:
            raise ChanaxisError(f"layer '{bad}' has NaN or infinite weights; the checkpoint is damaged (or training "
                                "diverged): load another one")
        config = {
            "model": model.spec, "weights_sha256": model.weights_sha256(),
            "dataset": {"name": handle.name, "split": p.split, "root": handle.root, "transform": p.transform,
                        # an ImageFolder is known by its folder: absolute, so any later stage finds it from anywhere
                        **({"path": str(Path(handle.card.search[0]).resolve())}
                           if handle.card.format == "imagefolder" else {})},
            "n_calibration": len(idx), "spatial_samples": p.spatial_samples, "seed": p.seed, "dtype": p.dtype,
            "chunk_images": p.chunk_images, "layers": names, "target_mode": "match", "precision": p.precision,
            **(ctx.inputs.get("extra_config") or {}),
        }
        if not Path(run).exists():  # refused before anything is written when the disk clearly lacks the space
            _check_space(run, len(idx), {l: (min(p.spatial_samples, int(np.prod(graph[l].out_hw))), graph[l].c_out)
                                         for l in names}, p.dtype, model.num_classes)
        grp = store.create_or_resume(run, config, overwrite=bool(ctx.inputs.get("overwrite")))
        if store.stage_state(grp, self.name) == "done":
            _reopen_damaged(grp, run, ctx)
            return
        if store.stage_state(grp, self.name) == "running":
            return
        positions = {l: spatial_positions(len(idx), int(np.prod(graph[l].out_hw)), p.spatial_samples, p.seed,
                                          graph[l].depth) for l in names}
        _create_arrays(grp, model, names, positions, idx, -(-len(idx) // p.chunk_images), p.chunk_images, p.dtype,
                       config)
        store.set_status(grp, self.name, "running")  # only now: a capture killed while making arrays remakes them

    def units(self, run) -> list[Unit]:
        grp = store.open_group(run)
        if store.stage_state(grp, self.name) == "done":
            return []
        n = int(grp[store.samples_array("image")].shape[0])
        c = int(store.run_config(grp)["chunk_images"])
        done = np.asarray(grp[store.samples_array("chunk_done")][:], dtype=bool)
        return [Unit(f"chunk/{k}", k, work=min(n, (k + 1) * c) - k * c) for k in range(len(done)) if not done[k]]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        """One chunk: its images (loaded ahead by the loader's workers) through the model, their samples written
        by a background thread while the next chunks compute."""
        st = ctx.memo(("capture", str(run)), lambda: _State(run, ctx, self.params))
        c = unit.data
        lo, hi = c * st.chunk, min(st.n, (c + 1) * st.chunk)
        x, y = st.images(c)
        y = y.cpu()
        reducers = {l: reducer(st.pos_t[l][lo:hi]) for l in st.names}
        with precision.autocast(st.precision, st.device, st.model):
            logits, caps = st.model.run(x, capture=reducers)
        logits = torch.as_tensor(logits).float().cpu()
        # bf16 autocast leaves bfloat16 samples, which numpy cannot hold: cast where they are (the store's dtype)
        result = {l: (v[0].to(st.torch_dtype).cpu().numpy(), v[1].float().cpu().numpy())
                  for l, v in caps.items()}
        _check_finite(result, logits, st, lo, hi)
        margin = logit_margin(logits, y).numpy()
        correct = (logits.argmax(1) == y).numpy()
        st.submit(_write_chunk, st.arrays, st.samples, st.done_arr, c, lo, hi, st.positions, result, y.numpy(),
                  margin, correct, logits.numpy())

    def flush(self, run, ctx: Context) -> None:
        st = ctx.memo(("capture", str(run)), lambda: None)
        if st is not None:
            st.wait()

    def finish(self, run, ctx: Context) -> str:
        self.flush(run, ctx)
        st = ctx.memo(("capture", str(run)), lambda: None)
        if st is not None:
            st.writer.shutdown()
            ctx.forget("capture")
        grp = store.open_group(run, mode="r+")
        if not np.asarray(grp[store.samples_array("chunk_done")][:], dtype=bool).all():
            raise ChanaxisError(f"the capture into '{run}' has unfinished chunks; rerun the same command to resume")
        store.set_status(grp, self.name, "done")
        return str(run)


def store_bytes(n_images: int, layers: dict[str, tuple[int, int]], dtype: str, n_classes: int) -> int:
    """Bytes a capture writes: per layer the samples (samples per image × channels) and the per-image means, plus
    the per-image records (label, margin, correct, logits)."""
    item = 2 if dtype == "float16" else 4
    per_image = sum(s * c * item + c * 4 for s, c in layers.values()) + 4 * n_classes + 9
    return int(n_images * per_image)


def _check_space(run, n_images, layers, dtype, n_classes) -> None:
    need = store_bytes(n_images, layers, dtype, n_classes)
    probe = Path(run).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ChanaxisError(f"the run store needs about {need / 1e9:.2f} GB and '{probe}' has {free / 1e9:.2f} GB "
                            "free; free space, choose another --out, or capture fewer images (--n-calibration) or "
                            "--dtype float16")


def _reopen_damaged(grp, run, ctx: Context) -> None:
    """A finished capture run again: verify every chunk against its checksum and mark the damaged ones (a deleted
    or altered chunk file) to be written again; nothing else is redone."""
    cfg = store.run_config(grp)
    bad = integrity.damaged(grp, list(cfg["layers"]), int(cfg["chunk_images"]))
    if bad:
        done = grp[store.samples_array("chunk_done")]
        for k in sorted(bad):
            done[k] = False
        store.set_status(grp, "capture", "running")
        (ctx.console.print if ctx.console is not None else print)(
            f"capture: {len(bad)} damaged chunk(s) in '{run}' ({', '.join(map(str, sorted(bad)[:8]))}); "
            "writing them again")


def _check_finite(result: dict, logits: torch.Tensor, st, lo: int, hi: int) -> None:
    """Stop at the first layer (in execution order) whose samples are NaN or infinite: every metric computed from
    them would be NaN, and a report of NaN is a silently wrong result."""
    where = f"calibration images {lo}–{hi - 1}"
    for name in st.names:
        local, gap = result[name]
        # one sum per array (no boolean temporaries on the hot path): finite exactly when every value is
        finite_gap = np.isfinite(gap.sum(dtype=np.float64))
        if not (finite_gap and _finite_sum(local)):
            if finite_gap and st.np_dtype == np.float16:
                raise ChanaxisError(f"layer '{name}' has activations beyond float16's range (±65504) on {where}; "
                                    "capture with --dtype float32")
            raise ChanaxisError(f"layer '{name}' outputs NaN or infinite values on {where}: the model's weights or "
                                "these images hold non-finite values; check the checkpoint and the data")
    if not torch.isfinite(logits).all():
        raise ChanaxisError(f"the model's logits are NaN or infinite on {where} (the analysed layers are finite: "
                            "the classifier head is not); check the checkpoint")


def _finite_sum(a: np.ndarray) -> bool:
    """Whether every value of `a` is finite, from one sum: float32 summed in float64, float16 in float32 by torch
    (numpy's float16 → float64 sum is 5× slower; finite float16 values, |x| ≤ 65504, cannot overflow float32)."""
    if a.dtype == np.float16:
        return bool(torch.isfinite(torch.from_numpy(a).sum(dtype=torch.float32)))
    return bool(np.isfinite(a.sum(dtype=np.float64)))


def _dataset(ctx: Context, model, p: CaptureParams):
    ds = ctx.inputs.get("dataset")
    if ds is None:
        raise ChanaxisError("capture needs a dataset (--dataset NAME or an ImageFolder path)")
    if hasattr(ds, "dataset"):
        return ds
    return ctx.memo(("dataset", str(ds), p.split, p.transform, model.input_size[1]),
                    lambda: load_dataset(ds, split=p.split, root=ctx.data_root, transform=p.transform,
                                         image_size=model.input_size[1]))


class _State:
    """What every chunk of one capture shares, rebuilt from the store in any process that runs a chunk."""

    def __init__(self, run, ctx: Context, p: CaptureParams):
        grp = store.open_group(run, mode="r+")
        self.model = ctx.model(run)
        self.handle = _dataset(ctx, self.model, p)
        self.idx = np.asarray(grp[store.samples_array("dataset_index")][...])
        self.n = len(self.idx)
        self.chunk = int(store.run_config(grp)["chunk_images"])
        self.names = list(store.run_config(grp)["layers"])
        s = {l: int(grp[store.layer_node(l)].attrs["samples_per_image"]) for l in self.names}
        self.positions = {l: np.asarray(grp[store.layer_array(l, "position")][...]).reshape(self.n, s[l])
                          for l in self.names}
        device = self.device = getattr(self.model, "device", "cpu")
        self.precision = store.run_config(grp).get("precision", "fp32")
        self.loader = ctx.loader(self.handle.dataset)
        self.stream, self.next_chunk = None, None
        self.pos_t = {l: torch.as_tensor(v, dtype=torch.long, device=device) for l, v in self.positions.items()}
        self.arrays = {l: (_written_whole(grp[store.layer_array(l, "local")]),
                           _written_whole(grp[store.layer_array(l, "gap")]),
                           grp[store.layer_array(l, integrity.CRC)]) for l in self.names}
        self.samples = {k: _written_whole(grp[store.samples_array(k)])
                        for k in ("label", "margin", "correct", "logits")}
        self.samples["crc"] = grp[store.samples_array(integrity.CRC)]
        self.done_arr = grp[store.samples_array("chunk_done")]
        self.np_dtype = np.float16 if store.run_config(grp)["dtype"] == "float16" else np.float32
        self.torch_dtype = torch.float16 if self.np_dtype == np.float16 else torch.float32
        self.writer = ThreadPoolExecutor(max_workers=1)
        self.pending: list = []

    def images(self, c: int):
        """Chunk `c`'s images and labels: the next item of the running stream of chunks (its later chunks load in
        the workers meanwhile); a stream restarts at `c` when the units come out of order (resume, a cluster)."""
        if self.next_chunk != c:
            self.stream = self.loader.batches(self.idx[c * self.chunk:], self.chunk)
        self.next_chunk = c + 1
        return next(self.stream)

    def submit(self, fn, *args) -> None:
        """Queue a chunk's writes; compute waits only when WRITE_AHEAD chunks are already waiting to be written."""
        while len(self.pending) >= WRITE_AHEAD:
            self.pending.pop(0).result()
        self.pending.append(self.writer.submit(fn, *args))

    def wait(self) -> None:
        while self.pending:
            self.pending.pop(0).result()


def _written_whole(arr):
    """`arr` writing every chunk it is given: zarr otherwise scans each chunk for "all equal to the fill value" (a
    full extra pass over the data, as much CPU as the write itself) to skip writing it. The values stored are the
    same either way (a skipped chunk reads as its fill value, 0); only an all-zero chunk now has its file."""
    with_config = getattr(arr, "with_config", None)
    return with_config({"write_empty_chunks": True}) if with_config is not None else arr


def capture(model, dataset, out, *, overwrite: bool = False, progress: bool = True, extra_config: dict | None = None,
            data_root: str | None = None, device: str = "cpu", loader_workers: int | None = None,
            scheduler=None, workers: int | None = None, **params) -> str:
    """Capture `model` (a `Model`, or a name/path any adapter opens) on a calibration subset of `dataset` into the
    run store at `out`; resumable; returns the store's path."""
    stage = CaptureStage(**params)
    if not hasattr(model, "graph"):  # a name, as on the command line: sized for the dataset's card
        from ..reload import model_for_dataset
        model = model_for_dataset(model, dataset, device=device)
    ctx = Context(device=getattr(model, "device", device), progress=progress, model=model, data_root=data_root,
                  loader_workers=loader_workers, scheduler=scheduler, workers=workers,
                  dataset=dataset, overwrite=overwrite, extra_config=extra_config)
    return run_stage(stage, out, ctx)


api(CaptureStage, capture)


def _write_chunk(arrays, samples, done_arr, c, lo, hi, positions, result, labels, margin, correct, logits):
    items = [(samples["label"], slice(lo, hi), labels), (samples["margin"], slice(lo, hi), margin),
             (samples["correct"], slice(lo, hi), correct), (samples["logits"], slice(lo, hi), logits)]
    for l, (local, gap) in result.items():
        s = positions[l].shape[1]
        items += [(arrays[l][0], slice(lo * s, hi * s), local), (arrays[l][1], slice(lo, hi), gap),
                  (arrays[l][2], c, integrity.crc(local))]
    items.append((samples["crc"], c, integrity.crc(margin)))
    store.write_many(items)
    done_arr[c] = True  # last: the chunk counts only once everything above is on disk


def _create_arrays(grp, model, names, positions, idx, n_chunks, chunk_images, dtype, config):
    """Every array of the store, made at once (`store.new_arrays`); called again from scratch if a capture was killed
    before its arrays were all made (the status turns "running" only after this returns)."""
    n = len(idx)
    graph = model.graph
    arrays = [
        dict(name=store.samples_array("image"), shape=(n,), dims=["image"], dtype="int32", data=np.arange(n, dtype=np.int32),
             attrs={"units": "1", "long_name": "calibration image number"}),
        dict(name=store.samples_array("dataset_index"), shape=(n,), dims=["image"], dtype="int64", data=np.asarray(idx),
             attrs={"units": "1", "description": "index into the dataset split"}),
        dict(name=store.samples_array("label"), shape=(n,), dims=["image"], dtype="int32", chunks=(chunk_images,),
             attrs={"units": "1", "description": "class index"}),
        dict(name=store.samples_array("margin"), shape=(n,), dims=["image"], dtype="float32", chunks=(chunk_images,),
             attrs={"units": "logit", "description": "T = z[label] - max_{c!=label} z[c]"}),
        dict(name=store.samples_array("correct"), shape=(n,), dims=["image"], dtype="bool", chunks=(chunk_images,),
             attrs={"units": "1", "description": "argmax of the logits is the label"}),
        dict(name=store.samples_array("logits"), shape=(n, model.num_classes), dims=["image", "class"], dtype="float32",
             chunks=(chunk_images, model.num_classes), attrs={"units": "logit"}),
        dict(name=store.samples_array(integrity.CRC), shape=(n_chunks,), dims=["chunk"], dtype="int64", chunks=(1,),
             attrs={"units": "1", "description": "CRC-32 of each chunk of margin as written"}),
        dict(name=store.samples_array("chunk_done"), shape=(n_chunks,), dims=["chunk"], dtype="bool", chunks=(1,),
             attrs={"units": "1", "description": "the chunk's samples are all written"}),
    ]
    groups = {"samples": {}, "layers": {}}
    for l in names:
        layer = graph[l]
        node = store.layer_node(l)
        s = positions[l].shape[1]
        groups[node] = {"kind": layer.kind, "c_in": layer.c_in, "c_out": layer.c_out, "groups": layer.groups,
                        "out_hw": list(layer.out_hw), "depth": layer.depth, "samples_per_image": s,
                        "norm": layer.norm, "hook": "pre-normalisation layer output"}
        w = graph.filters(l).reshape(layer.c_out, -1)
        arrays += [
            dict(name=f"{node}/local", shape=(n * s, layer.c_out), dims=["sample", "channel"], dtype=dtype,
                 chunks=(chunk_images * s, layer.c_out),
                 attrs={"coordinates": "image_of_sample position", "units": "activation",
                        "description": "pre-normalisation output at sampled spatial positions"}),
            dict(name=f"{node}/gap", shape=(n, layer.c_out), dims=["image", "channel"], dtype="float32",
                 chunks=(chunk_images, layer.c_out),
                 attrs={"units": "activation", "description": "per-image global average"}),
            dict(name=f"{node}/image_of_sample", shape=(n * s,), dims=["sample"], dtype="int32",
                 data=np.repeat(np.arange(n, dtype=np.int32), s), attrs={"units": "1"}),
            dict(name=f"{node}/position", shape=(n * s,), dims=["sample"], dtype="int32",
                 data=positions[l].reshape(-1).astype(np.int32), attrs={"units": "1", "description": "flat spatial index h*W+w"}),
            dict(name=f"{node}/{integrity.CRC}", shape=(n_chunks,), dims=["chunk"], dtype="int64", chunks=(1,),
                 attrs={"units": "1", "description": "CRC-32 of each chunk of local as written"}),
            dict(name=f"{node}/channel", shape=(layer.c_out,), dims=["channel"], dtype="int32",
                 data=np.arange(layer.c_out, dtype=np.int32), attrs={"units": "1"}),
            dict(name=f"{node}/group", shape=(layer.c_out,), dims=["channel"], dtype="int64",
                 data=np.asarray(layer.group, dtype=np.int64),
                 attrs={"units": "1", "description": "coupling group (channels tied by residual adds share one)"}),
            dict(name=f"{node}/weight", shape=w.shape, dims=["channel", "fan_in"], dtype="float32", compress=True,
                 data=np.asarray(w, dtype=np.float32), attrs={"units": "weight", "description": "the layer's filters, one row per output channel"}),
        ]
    store.new_arrays(grp, groups=groups, arrays=arrays)
    _write_graph(grp, graph)
    grp.update_attributes({"calibration_sha256": _sha(idx), "folded_bn": bool(graph.folded_bn),
                           "weights_sha256": config["weights_sha256"], "model_spec": config["model"],
                           "dataset": config["dataset"], "seed": config["seed"]})


def _write_graph(grp, graph) -> None:
    layers = graph.layers
    gg = grp.require_group("graph")
    cols = {
        "layer": (str, [l.name for l in layers]), "kind": (str, [l.kind for l in layers]),
        "c_in": ("int64", [l.c_in for l in layers]), "c_out": ("int64", [l.c_out for l in layers]),
        "groups": ("int64", [l.groups for l in layers]), "kernel_h": ("int64", [l.kernel[0] for l in layers]),
        "kernel_w": ("int64", [l.kernel[1] for l in layers]), "stride": ("int64", [l.stride[0] for l in layers]),
        "out_h": ("int64", [l.out_hw[0] for l in layers]), "out_w": ("int64", [l.out_hw[1] for l in layers]),
        "macs": ("int64", [l.macs for l in layers]), "depth": ("int64", [l.depth for l in layers]),
        "norm": (str, [l.norm for l in layers]),
    }
    arrays = [dict(name=k, shape=(len(layers),), dims=["layer"], dtype=dt,
                   attrs={"units": "MACs"} if k == "macs" else {},
                   data=np.asarray(vals, dtype=object if dt is str else dt)) for k, (dt, vals) in cols.items()]
    edges = list(graph.g.edges)
    for k, pos in (("edge_src", 0), ("edge_dst", 1)):
        arrays.append(dict(name=k, shape=(max(1, len(edges)),), dims=["edge"], dtype=str,
                           data=np.asarray([e[pos] for e in edges] or [""], dtype=object)))
    store.new_arrays(gg, arrays=arrays)
    gg.update_attributes({"total_macs": int(graph.total_macs),
                          "other_macs": {k: int(v) for k, v in graph.other_macs.items()}, "units": "MACs"})
