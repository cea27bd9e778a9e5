"""Time of all metrics ÷ time of the layer covariances alone, on a ResNet-18 store of 5 000 images × 16 samples,
and the hull search in channels/s on a 3 072-channel layer (ConvNeXt-T's MLP width).
Run: .venv/bin/python bench/metrics.py [--store PATH] [--images 5000]    (goal: ratio ≤ 2.0)

The store is captured once (fashion-mnist, resnet18 at 32 px) and reused. Covariances, the channel metrics (`--only
local,target`) and the whole stage (with §4 structure and the gradient-geometry pass) are timed alternately, twice each,
in this one run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="/tmp/chanaxis-bench/r18_fmnist.zarr")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import torch
    import zarr

    import chanaxis
    from chanaxis.estimators import peers
    from chanaxis.moments import compute as layer_moments
    from chanaxis.stages.metrics import metrics
    torch.set_num_threads(2)
    store = Path(a.store)
    if not store.exists() or chanaxis.open_run(store).attrs["status"].get("capture") != "done":
        model = chanaxis.load_model("resnet18", num_classes=10, image_size=32)
        t = time.perf_counter()
        chanaxis.capture(model, "fashion-mnist", store, n_calibration=a.images, progress=True)
        print(f"capture: {time.perf_counter() - t:.0f} s")
    layers = list(chanaxis.open_run(store)["graph"]["layer"].values)
    tree = chanaxis.open_run(store)
    n = tree["samples"].sizes["image"]
    chans = sum(tree[f"layers/{l}"].sizes["channel"] for l in layers)
    print(f"store: {n} images, {len(layers)} layers, {chans} channels")
    cov_t, chan_t, all_t = [], [], []

    def fresh():
        grp = zarr.open_group(str(store), mode="r+")
        for node in ("metrics_parts", "metrics", "structure"):
            if node in grp:
                del grp[node]
    for _ in range(a.repeats):
        t = time.perf_counter()
        for l in layers:
            layer_moments(store, l)
        cov_t.append(time.perf_counter() - t)
        fresh()
        t = time.perf_counter()
        metrics(store, only=("local", "target"), progress=False)
        chan_t.append(time.perf_counter() - t)
        fresh()
        t = time.perf_counter()
        metrics(store, progress=False)
        all_t.append(time.perf_counter() - t)
        print(f"  covariances {cov_t[-1]:.1f} s | channel metrics (local + target) {chan_t[-1]:.1f} s, ratio "
              f"{chan_t[-1] / cov_t[-1]:.2f} | whole stage (+ structure, gradient geometry) {all_t[-1]:.1f} s, "
              f"ratio {all_t[-1] / cov_t[-1]:.2f}")
    med = statistics.median
    print(f"every channel metric of METHOD §2-3 ÷ covariances alone: {med(chan_t) / med(cov_t):.2f}; whole metrics "
          f"stage with §4 structure and gradient geometry ÷ covariances alone: {med(all_t) / med(cov_t):.2f} "
          f"(medians of {a.repeats}; goal ≤ 2.0)")

    rng = np.random.default_rng(0)
    c, k = 3072, 64
    f = rng.standard_normal((20000, k)) @ rng.standard_normal((k, c)) + 0.5 * rng.standard_normal((20000, c))
    C = np.corrcoef(f.T)
    t = time.perf_counter()
    e_full = peers.peer_r2_full(C)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    h = peers.hull_all(C, e_full=e_full)
    t_hull = time.perf_counter() - t
    print(f"hull search, C = {c}: {c / t_hull:.0f} channels/s ({t_hull:.2f} s; mean hull size "
          f"{h.size.mean():.1f}); peer_r2_full {t_full:.2f} s")


if __name__ == "__main__":
    main()
