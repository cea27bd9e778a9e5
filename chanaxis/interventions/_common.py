"""What lesion and pruning share: the store checks, the model and evaluation images, the loss/accuracy pass."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from .. import store
from ..errors import ChanaxisError


def require_metrics(run, grp) -> None:
    if grp.attrs.get("status", {}).get("metrics") != "done" or "metrics" not in grp:
        raise ChanaxisError(f"'{run}' has no finished /metrics; run `chanaxis metrics {run}` first")


def metrics_table(run) -> xr.Dataset:
    """/metrics in memory (one row per channel)."""
    return xr.open_zarr(str(run), group="metrics", consolidated=False, zarr_format=3, chunks=None).load()


def open_model(run, model=None, device: str = "cpu"):
    from ..reload import model_from_store
    return model_from_store(run, device=device, model=model)


def load_eval_images(run, n: int | None, seed: int = 0, handle=None):
    """A seeded random subset of `n` images of the evaluation split (all when n is None or ≥ its size)."""
    from ..reload import dataset_from_store
    h = handle or dataset_from_store(run, split="eval")
    total = len(h.dataset)
    if n is None or n >= total:
        idx = np.arange(total)
    else:
        if n < 1:
            raise ChanaxisError(f"--eval-images must be ≥ 1, not {n}")
        idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    items = [h.dataset[int(i)] for i in idx]
    x = torch.stack([it[0] for it in items])
    y = torch.as_tensor([int(it[1]) for it in items])
    info = {"split": getattr(h, "split", "eval"), "n_images": int(len(idx)), "seed": seed,
            "indices_sha256": hashlib.sha256(np.ascontiguousarray(idx, np.int64).tobytes()).hexdigest()}
    return x, y, info


def ce_and_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-variant sums over images of cross-entropy (nats) and correct predictions; logits K×N×classes."""
    logits = torch.as_tensor(logits).float()
    if logits.ndim == 2:
        logits = logits[None]
    k, n, c = logits.shape
    yy = y.to(logits.device).repeat(k)
    ce = F.cross_entropy(logits.reshape(-1, c), yy, reduction="none").reshape(k, n)
    correct = (logits.argmax(-1) == yy.reshape(k, n)).float()
    return ce.sum(1).double().cpu().numpy(), correct.sum(1).double().cpu().numpy()


def evaluate(model, x, y, batch_size: int, masks=None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (%) of `model` under `masks` on (x, y)."""
    ce = acc = 0.0
    for lo in range(0, len(x), batch_size):
        logits, _ = model.run(x[lo:lo + batch_size], masks=masks)
        c, a = ce_and_correct(logits, y[lo:lo + batch_size])
        ce, acc = ce + c[0], acc + a[0]
    return ce / len(x), 100.0 * acc / len(x)


def check_stage_config(grp, node: str, config: dict, overwrite: bool, command: str) -> None:
    """A stage node written with other parameters is refused (or replaced with --overwrite), never mixed."""
    if node not in grp:
        return
    old = grp[node].attrs.get("config")
    if old is not None and old != store._jsonable(config):
        if not overwrite:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != store._jsonable(config).get(k))
            raise ChanaxisError(f"'{node}' in the store was made with other parameters (differs in: "
                                f"{', '.join(diff)}); rerun with the same options or pass --overwrite to redo "
                                f"`chanaxis {command}`")
        del grp[node]


def strings(a) -> np.ndarray:
    """Fixed-width unicode from whatever zarr returns (numpy 2 StringDType, object)."""
    return np.asarray([str(v) for v in np.asarray(a).tolist()])
