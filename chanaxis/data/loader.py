"""The one batching path of every stage that reads images: a DataLoader with worker processes, pinned memory and
prefetch on CUDA, workers kept for the whole stage, and results that do not depend on the number of workers.

    loader = Loader(handle.dataset, workers=None, device="cuda")
    for x, y in loader.batches(indices, batch_size=128):       # the items of `indices`, in that order
        ...
    for x, y in loader.batches(indices, 128, seeds=item_seeds):  # augmentation seeded per item

* Order: batches hold the items of `indices` in the order given, whatever the number of workers (DataLoader hands
  batches back in sampler order).
* Augmentation: with `seeds`, each item's transform draws from torch's generator seeded with its own seed (in
  whichever process decodes it), so a random crop or flip is a function of (seed, item) only — not of the worker
  that happened to load it, nor of how many there are.
* Workers: `None` means `default_workers()` (the usable cores, or `$CHANAXIS_LOADER_WORKERS`); 0 loads in the
  calling thread. Workers start on first use and persist until `close()` (or the Loader is dropped).
* CUDA: pinned host memory, `non_blocking` copies, and for JPEG files with a deterministic transform the decode runs
  on the GPU (workers read the bytes; `torchvision.io.decode_jpeg(device=…)` decodes the batch).
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from chanaxis.errors import ChanaxisError

ENV = "CHANAXIS_LOADER_WORKERS"
MAX_DEFAULT = 32


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """$CHANAXIS_LOADER_WORKERS when set, else the cores this process may use (at most 32)."""
    env = os.environ.get(ENV)
    if env not in (None, ""):
        try:
            n = int(env)
        except ValueError:
            raise ChanaxisError(f"${ENV} must be a whole number of worker processes, not {env!r}") from None
        return check_workers(n)
    return min(usable_cores(), MAX_DEFAULT)


def check_workers(n: int | None) -> int:
    """`n` (None: the default) as a worker count, or a one-line error."""
    if n is None:
        return default_workers()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ChanaxisError(f"--loader-workers must be 0 (load in the main process) or more, not {n!r}")
    return int(n)


class _Plan(Sampler):
    """The batches of the current pass, set before each pass (a persistent DataLoader re-reads its sampler)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int | None]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Items(Dataset):
    """dataset[i], with torch's generator seeded per item when a seed comes with the index; `encoded` serves the
    file bytes instead (decoded later, on the device)."""

    def __init__(self, dataset, encoded: bool):
        self.dataset, self.encoded = dataset, encoded

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        if self.encoded:
            return self.dataset.encoded(i)
        if seed is None:
            return self.dataset[i]
        # CPU transforms draw from the CPU default generator only: seed just that one (torch.manual_seed would also
        # seed every CUDA/MPS/XPU generator, at ~0.13 ms a call, and leave them moved, since fork_rng(devices=[])
        # restores only the CPU state); fork_rng puts the caller's CPU state back after
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            return self.dataset[i]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism


def _collate_encoded(items):
    return [it[0] for it in items], torch.as_tensor([it[1] for it in items], dtype=torch.long)


def _gpu_decodable(dataset, device: torch.device) -> bool:
    """JPEG files with a deterministic transform, on CUDA: decode on the GPU."""
    if device.type != "cuda" or not hasattr(dataset, "encoded") or not hasattr(dataset, "files"):
        return False
    tf = getattr(dataset, "transform", None)
    if tf is None or not getattr(tf, "deterministic", False):
        return False
    return all(str(f).lower().endswith((".jpg", ".jpeg")) for f in dataset.files)


class Loader:
    """Batches of (images, labels) from `dataset` on `device`; see the module docstring."""

    def __init__(self, dataset, workers: int | None = None, device: str | torch.device = "cpu",
                 prefetch: int = 4, decode_on_device: bool | None = None):
        self.dataset = dataset
        self.workers = check_workers(workers)
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.device_decode = _gpu_decodable(dataset, self.device) if decode_on_device is None else decode_on_device
        if self.device_decode and not hasattr(dataset, "encoded"):
            raise ChanaxisError("decode on the device needs a dataset of image files")
        self._plan = _Plan()
        # its own generator: DataLoader draws a base seed per pass, which must not move the caller's torch RNG
        kw = dict(num_workers=self.workers, persistent_workers=self.workers > 0, pin_memory=cuda,
                  worker_init_fn=_worker_init if self.workers else None, generator=torch.Generator())
        if self.workers:
            kw["prefetch_factor"] = prefetch
        if self.device_decode:
            kw["collate_fn"] = _collate_encoded
            kw["pin_memory"] = False
        self._dl = DataLoader(_Items(dataset, self.device_decode), batch_sampler=self._plan, **kw)

    def batches(self, indices: Sequence[int], batch_size: int, *, seeds: Sequence[int] | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of the items `indices`, in that order, on the loader's device."""
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if batch_size < 1:
            raise ChanaxisError(f"batch size must be ≥ 1, not {batch_size}")
        if seeds is not None and len(seeds) != len(idx):
            raise ChanaxisError("one augmentation seed per item is needed")
        keys = list(zip(idx, [None] * len(idx) if seeds is None else [int(s) for s in seeds]))
        plan = [keys[lo:lo + batch_size] for lo in range(0, len(keys), batch_size)]
        if drop_last and plan and len(plan[-1]) < batch_size:
            plan.pop()
        self._plan.batches = plan
        if not plan:
            return
        if self._dl is None:
            raise ChanaxisError("this loader was closed")
        blocking = self.device.type != "cuda"
        for x, y in self._dl:
            if self.device_decode:
                x = self._decode(x)
            yield x.to(self.device, non_blocking=not blocking), y.to(self.device, non_blocking=not blocking)
        self._plan.batches = []

    def _decode(self, encoded: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg
        imgs = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        tf = self.dataset.transform
        return torch.stack([tf(im) for im in imgs])

    def images(self, indices: Sequence[int], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item of `indices` at once, (x, y) in host memory (a held evaluation set, moved per batch)."""
        xs, ys = [], []
        for x, y in self.batches(indices, batch_size):
            xs.append(x.cpu())
            ys.append(y.cpu())
        if not xs:
            raise ChanaxisError("no images to load")
        return torch.cat(xs), torch.cat(ys)

    def close(self) -> None:
        """Stop the workers (they stop by themselves when the Loader is dropped)."""
        self._dl = None  # the persistent iterator goes with its DataLoader, and shuts its workers down


def item_seeds(seed: int, epoch: int, n: int) -> np.ndarray:
    """One augmentation seed per position of an epoch's order: a function of (seed, epoch) only."""
    return np.random.default_rng([int(seed), int(epoch), 0xA06]).integers(0, 2**62, size=n)
