"""What lesion and pruning share: the store checks, the checked model, the evaluation images, the metrics table."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import xarray as xr

from .. import store
from ..errors import ChanaxisError


def require_metrics(run, grp) -> None:
    if store.stage_state(grp, "metrics") != "done" or store.METRICS not in grp:
        raise ChanaxisError(f"'{run}' has no finished /metrics; run `chanaxis metrics {run}` first")


def metrics_table(run) -> xr.Dataset:
    """/metrics in memory (one row per channel)."""
    return store.read_dataset(run, store.METRICS)


def metrics_layers(grp) -> np.ndarray:
    """The layer of every /metrics row (without loading the table)."""
    return strings(grp[store.METRICS]["layer"][...])


def checked_model(run, ctx):
    """The context's model, checked once per process against the weights the store was captured with."""
    from ..reload import model_from_store
    model = ctx.model(run)
    ctx.memo(("weights_checked", str(run), id(model)), lambda: model_from_store(run, model=model))
    return model


def load_eval_images(run, n: int | None, seed: int = 0, handle=None, ctx=None):
    """A seeded random subset of `n` images of the evaluation split (all when n is None or ≥ its size), read
    through the context's loader (its workers), held in host memory."""
    from ..data.loader import Loader
    from ..reload import dataset_from_store
    h = handle or dataset_from_store(run, split="eval")
    idx = eval_indices(len(h.dataset), n, seed)
    x, y = (ctx.loader(h.dataset) if ctx is not None else Loader(h.dataset)).images(idx)
    info = {"split": getattr(h, "split", "eval"), "n_images": int(len(idx)), "seed": seed,
            "indices_sha256": hashlib.sha256(np.ascontiguousarray(idx, np.int64).tobytes()).hexdigest()}
    return x, y, info


def eval_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """The evaluation split's indices `load_eval_images` reads: all, or a sorted seeded subset of `n`."""
    if n is None or n >= total:
        return np.arange(total)
    if n < 1:
        raise ChanaxisError(f"--eval-images must be ≥ 1, not {n}")
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def strings(a) -> np.ndarray:
    """Fixed-width unicode from whatever zarr returns (numpy 2 StringDType, object)."""
    return np.asarray([str(v) for v in np.asarray(a).tolist()])
