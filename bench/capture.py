"""Capture throughput ÷ plain eval forward (same model, same images, same data loading), and peak RSS of a capture
at 1 000 vs 20 000 images. Run: .venv/bin/python bench/capture.py [--quick]

Goals (issue 2): ratio ≥ 0.9 for resnet18, mobilenetv2_100, convnext_tiny at 32×32; RSS(20k) / RSS(1k) ≤ 1.1.
Both sides of each ratio are measured in this one run, alternating, so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def plain_forward(model, handle, idx, batch):
    t = time.perf_counter()
    model.module.eval()
    with torch.no_grad():
        for lo in range(0, len(idx), batch):
            x = torch.stack([handle.dataset[int(i)][0] for i in idx[lo:lo + batch]])
            model.module(x)
    return len(idx) / (time.perf_counter() - t)


def write_bandwidth(tmp, total_mb=1024, block_mb=8):
    """Buffered write speed of the store's folder in MB/s: `total_mb` of random float32 in `block_mb` files (a
    capture's chunks are files of this order), written the way zarr writes chunks (one file each), then removed."""
    d = Path(tmp) / "bandwidth"
    d.mkdir()
    block = np.random.default_rng(0).standard_normal(block_mb * 2 ** 18).astype(np.float32).tobytes()
    t = time.perf_counter()
    for i in range(total_mb // block_mb):
        (d / f"{i}").write_bytes(block)
    speed = total_mb * 2 ** 20 / 1e6 / (time.perf_counter() - t)
    shutil.rmtree(d)
    return speed


def model_pass(model, handle, idx, batch):
    """model.run with capture's own reducers, no store: the compute side of a capture."""
    from chanaxis.sampling import reducer as _reducer, spatial_positions
    g = model.graph
    pos = {l: torch.as_tensor(spatial_positions(len(idx), int(np.prod(g[l].out_hw)), 16, 0, g[l].depth))
           for l in g.names}
    t = time.perf_counter()
    for lo in range(0, len(idx), batch):
        x = torch.stack([handle.dataset[int(i)][0] for i in idx[lo:lo + batch]])
        model.run(x, capture={l: _reducer(p[lo:lo + batch]) for l, p in pos.items()})
    return len(idx) / (time.perf_counter() - t)


def capture_speed(model, dataset, n, batch, tmp):
    """The whole `chanaxis.capture` (store made, samples written); the store is removed afterwards so that old
    runs' dirty pages do not slow the next one. Returns (images/s, bytes on disk per image)."""
    import chanaxis
    out = Path(tmp) / f"c{time.perf_counter_ns()}.zarr"
    t = time.perf_counter()
    chanaxis.capture(model, dataset, out, n_calibration=n, chunk_images=batch, progress=False)
    speed = n / (time.perf_counter() - t)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out)
    return speed, size / n


def rss_child(n: int, model: str, out: str) -> None:
    import resource

    import chanaxis
    m = chanaxis.load_model(model, num_classes=10, image_size=32)
    chanaxis.capture(m, "fashion-mnist", out, n_calibration=n, chunk_images=128, progress=False)
    print(json.dumps({"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images (a smoke run, noisier ratios)")
    ap.add_argument("--images", type=int, default=1024, help="images per timed run (default 1024)")
    ap.add_argument("--dir", default=None, help="where the timed stores are written (default: a temporary folder)")
    ap.add_argument("--rss-child", nargs=3, metavar=("N", "MODEL", "OUT"))
    a = ap.parse_args()
    if a.rss_child:
        return rss_child(int(a.rss_child[0]), a.rss_child[1], a.rss_child[2])
    import chanaxis
    from chanaxis.data import calibration_indices
    torch.set_num_threads(2)
    n = 256 if a.quick else a.images
    batch = 128
    handle = chanaxis.load_dataset("fashion-mnist")
    idx = calibration_indices(len(handle.dataset), n, 0)
    print(f"capture vs plain eval forward, {n} fashion-mnist images at 32 px, batch {batch}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        print(f"stores written under {tmp}; buffered write speed there {write_bandwidth(tmp):.0f} MB/s")
        for name in ("resnet18", "mobilenetv2_100", "convnext_tiny"):
            model = chanaxis.load_model(name, num_classes=10, image_size=32)
            plain_forward(model, handle, idx[:batch], batch)  # warm-up
            ratios, mratios, fw, cp, mp = [], [], [], [], []
            for _ in range(3):
                f = plain_forward(model, handle, idx, batch)
                m = model_pass(model, handle, idx, batch)
                c, per_image = capture_speed(model, handle, n, batch, tmp)
                fw.append(f)
                mp.append(m)
                cp.append(c)
                ratios.append(c / f)
                mratios.append(m / f)
            med = statistics.median
            print(f"  {name:16s} forward {med(fw):6.1f} img/s | model pass with reductions {med(mp):6.1f} img/s, "
                  f"ratio {med(mratios):.2f} | capture {med(cp):6.1f} img/s, ratio {med(ratios):.2f} "
                  f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}) | store {per_image / 1e6:.2f} MB/image, "
                  f"written at {med(cp) * per_image / 1e6:.0f} MB/s")
        sizes = (500, 5000) if a.quick else (1000, 20000)
        res = {}
        for s in sizes:
            r = subprocess.run([sys.executable, __file__, "--rss-child", str(s), "mobilenetv2_100",
                                str(Path(tmp) / f"rss{s}.zarr")], capture_output=True, text=True, check=True)
            res[s] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        print(f"peak RSS of a capture (mobilenetv2_100, 32 px): {sizes[0]} images {res[sizes[0]]:.0f} MB, "
              f"{sizes[1]} images {res[sizes[1]]:.0f} MB, ratio {res[sizes[1]] / res[sizes[0]]:.3f}")


if __name__ == "__main__":
    main()
