"""Streaming capture (METHOD §1): calibration images → pre-normalisation channel samples in the run store.

Memory is bounded by one batch: each batch's samples go straight into preallocated, chunk-aligned zarr arrays
(one chunk = one batch of images), written by a background thread while the next batch runs. A boolean per chunk
records completion after all of its arrays are written, so a killed capture resumes at the first unfinished chunk
and yields the same arrays (spatial positions are drawn up front from the seed, not per batch).
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import store
from ..data import calibration_indices, load_dataset
from ..errors import ChanaxisError
from ..progress import progress_bar

DEFAULTS = {"n_calibration": 5000, "spatial_samples": 16, "seed": 0, "dtype": "float32", "chunk_images": 128,
            "transform": "eval", "target_mode": "match"}


def spatial_positions(n_images: int, hw: int, spatial_samples: int, seed: int, depth: int) -> np.ndarray:
    """Flat spatial positions sampled per image: uniform with replacement, or all when H·W ≤ spatial_samples."""
    if hw <= spatial_samples:
        return np.broadcast_to(np.arange(hw), (n_images, hw)).copy()
    return np.random.default_rng([seed, depth]).integers(0, hw, size=(n_images, spatial_samples))


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """T = z[label] − max_{c≠label} z[c] (METHOD §1)."""
    z = logits.float()
    own = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).max(1).values
    return own - other


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def capture(model, dataset: str | Any, out: str | Path, split: str = "train", root: str | None = None,
            n_calibration: int = 5000, spatial_samples: int = 16, seed: int = 0, dtype: str = "float32",
            chunk_images: int = 128, transform: str = "eval", layers: list[str] | None = None,
            overwrite: bool = False, progress: bool = True, extra_config: dict | None = None) -> str:
    """Capture `model` on a calibration subset of `dataset` into the run store at `out`; returns its path."""
    if dtype not in ("float32", "float16"):
        raise ChanaxisError(f"--dtype must be float32 or float16, not '{dtype}'")
    store.ensure_writable(out)
    handle = dataset if hasattr(dataset, "dataset") else load_dataset(dataset, split=split, root=root,
                                                                       transform=transform,
                                                                       image_size=model.input_size[1])
    if tuple(model.input_size[1:]) != (handle.image_size, handle.image_size):
        raise ChanaxisError(f"the model expects {model.input_size[1]}×{model.input_size[2]} images but "
                            f"'{handle.name}' gives {handle.image_size}×{handle.image_size}; pass --image-size")
    if model.num_classes != handle.num_classes:
        raise ChanaxisError(f"the model has {model.num_classes} outputs but '{handle.name}' has "
                            f"{handle.num_classes} classes; pass --num-classes {handle.num_classes}")
    n_total = len(handle.dataset)
    idx = calibration_indices(n_total, n_calibration, seed)
    n = len(idx)
    graph = model.graph
    names = list(layers or graph.names)
    unknown = [l for l in names if l not in graph]
    if unknown:
        raise ChanaxisError(f"unknown layer '{unknown[0]}'; valid layers: {', '.join(graph.names[:8])}, ...")
    config = {
        "model": model.spec, "weights_sha256": model.weights_sha256(),
        "dataset": {"name": handle.name, "split": split, "root": handle.root, "transform": transform},
        "n_calibration": n, "spatial_samples": spatial_samples, "seed": seed, "dtype": dtype,
        "chunk_images": chunk_images, "layers": names, "target_mode": "match", **(extra_config or {}),
    }
    grp = store.create_or_resume(out, config, overwrite=overwrite)
    if grp.attrs.get("status", {}).get("capture") == "done":
        return str(out)
    n_chunks = -(-n // chunk_images)
    positions = {l: spatial_positions(n, int(np.prod(graph[l].out_hw)), spatial_samples, seed, graph[l].depth)
                 for l in names}
    if grp.attrs.get("status", {}).get("capture") != "running":
        _create_arrays(grp, model, names, positions, idx, n_chunks, chunk_images, dtype, handle, config)
    done_arr = grp["samples/chunk_done"]
    done = np.asarray(done_arr[:], dtype=bool)
    store.set_status(grp, "capture", "running")
    arrays = {l: (grp[f"layers/{l}/local"], grp[f"layers/{l}/gap"]) for l in names}
    samples = {k: grp[f"samples/{k}"] for k in ("label", "margin", "correct", "logits")}
    np_dtype = np.float16 if dtype == "float16" else np.float32
    device = getattr(model, "device", "cpu")
    pos_t = {l: torch.as_tensor(p, dtype=torch.long, device=device) for l, p in positions.items()}
    todo = [c for c in range(n_chunks) if not done[c]]

    with ThreadPoolExecutor(max_workers=1) as writer, progress_bar(progress) as bar:
        task = bar.add_task("capture", total=n, completed=(n_chunks - len(todo)) * chunk_images if todo else n)
        pending = None
        t0 = time.perf_counter()
        for k, c in enumerate(todo):
            lo, hi = c * chunk_images, min(n, (c + 1) * chunk_images)
            items = [handle.dataset[int(i)] for i in idx[lo:hi]]
            x = torch.stack([it[0] for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
            reducers = {l: _reducer(pos_t[l][lo:hi]) for l in names}
            logits, caps = model.run(x, capture=reducers)
            logits = torch.as_tensor(logits).float().cpu()
            result = {l: (v[0].cpu().numpy().astype(np_dtype, copy=False), v[1].cpu().numpy())
                      for l, v in caps.items()}
            margin = logit_margin(logits, y).numpy()
            correct = (logits.argmax(1) == y).numpy()
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_chunk, arrays, samples, done_arr, c, lo, hi, positions, result, y.numpy(),
                                    margin, correct, logits.numpy())
            bar.update(task, advance=hi - lo)
            if k == 0 and progress and len(todo) > 1:
                eta = (time.perf_counter() - t0) * len(todo)
                bar.console.print(f"capture: {n} images, {len(names)} layers, about {eta:.0f} s (from the first batch)")
        if pending is not None:
            pending.result()
    store.set_status(grp, "capture", "done")
    return str(out)


def sample_positions(t: torch.Tensor, pos: torch.Tensor, with_mean: bool = False):
    """The C-vectors of `t` (the NCHW view of a layer's output) at flat positions `pos` (image × sample), as
    (image·sample, C), plus the per-image mean when asked. Read in the output's own memory layout (NCHW, or
    channels-last as ConvNeXt's MLP and channels_last models give it), so no full-size copy is made. Advanced
    indexing copies at once, so later in-place ops (ReLU, residual +=) cannot reach the samples."""
    b, c = t.shape[:2]
    rows = torch.arange(b, device=pos.device)[:, None]
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        flat = t.permute(0, 2, 3, 1).reshape(b, -1, c)   # a view: (image, position, channel)
        local, dim = flat[rows, pos], 1
    else:
        flat = t.reshape(b, c, -1)                        # (image, channel, position)
        local, dim = flat[rows, :, pos], 2
    local = local.reshape(-1, c)
    return (local, flat.mean(dim, dtype=torch.float32)) if with_mean else local


def _reducer(pos: torch.Tensor):
    """The capture hook's reduction: sampled C-vectors and per-image means (`sample_positions`)."""
    return lambda t: sample_positions(t, pos, with_mean=True)


def _write_chunk(arrays, samples, done_arr, c, lo, hi, positions, result, labels, margin, correct, logits):
    items = [(samples["label"], slice(lo, hi), labels), (samples["margin"], slice(lo, hi), margin),
             (samples["correct"], slice(lo, hi), correct), (samples["logits"], slice(lo, hi), logits)]
    for l, (local, gap) in result.items():
        s = positions[l].shape[1]
        items += [(arrays[l][0], slice(lo * s, hi * s), local), (arrays[l][1], slice(lo, hi), gap)]
    store.write_many(items)
    done_arr[c] = True  # last: the chunk counts only once everything above is on disk


def _create_arrays(grp, model, names, positions, idx, n_chunks, chunk_images, dtype, handle, config):
    """Every array of the store, made at once (`store.new_arrays`); called again from scratch if a capture was killed
    before its arrays were all made (the status turns "running" only after this returns)."""
    n = len(idx)
    graph = model.graph
    arrays = [
        dict(name="samples/image", shape=(n,), dims=["image"], dtype="int32", data=np.arange(n, dtype=np.int32)),
        dict(name="samples/dataset_index", shape=(n,), dims=["image"], dtype="int64", data=np.asarray(idx),
             attrs={"description": "index into the dataset split"}),
        dict(name="samples/label", shape=(n,), dims=["image"], dtype="int32", chunks=(chunk_images,)),
        dict(name="samples/margin", shape=(n,), dims=["image"], dtype="float32", chunks=(chunk_images,),
             attrs={"units": "logit", "description": "T = z[label] - max_{c!=label} z[c]"}),
        dict(name="samples/correct", shape=(n,), dims=["image"], dtype="bool", chunks=(chunk_images,)),
        dict(name="samples/logits", shape=(n, model.num_classes), dims=["image", "class"], dtype="float32",
             chunks=(chunk_images, model.num_classes), attrs={"units": "logit"}),
        dict(name="samples/chunk_done", shape=(n_chunks,), dims=["chunk"], dtype="bool", chunks=(1,)),
    ]
    groups = {"samples": {}, "layers": {}}
    for l in names:
        layer = graph[l]
        node = f"layers/{l}"
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
                 data=np.repeat(np.arange(n, dtype=np.int32), s)),
            dict(name=f"{node}/position", shape=(n * s,), dims=["sample"], dtype="int32",
                 data=positions[l].reshape(-1).astype(np.int32), attrs={"description": "flat spatial index h*W+w"}),
            dict(name=f"{node}/channel", shape=(layer.c_out,), dims=["channel"], dtype="int32",
                 data=np.arange(layer.c_out, dtype=np.int32)),
            dict(name=f"{node}/group", shape=(layer.c_out,), dims=["channel"], dtype="int64",
                 data=np.asarray(layer.group, dtype=np.int64),
                 attrs={"description": "coupling group (channels tied by residual adds share one)"}),
            dict(name=f"{node}/weight", shape=w.shape, dims=["channel", "fan_in"], dtype="float32", compress=True,
                 data=np.asarray(w, dtype=np.float32)),
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
