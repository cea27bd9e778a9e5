"""Capture throughput on onnxruntime ÷ torch, same network, same images, same thread count.

Run: .venv/bin/python bench/onnx.py [--model resnet18] [--n 512] [--dataset synthetic] [--threads 2]

The torch model (random init, seeded) is exported once with the dynamo exporter (BN folded, as a user's export
usually is) and once with BN kept; each repeat runs the torch capture and the ONNX captures back to back, three
repeats, and the median ratio is printed. Two figures per side: the whole `chanaxis.capture` stage (data loading and
zarr writes included, the same work on both sides) and the bare model pass (`model.run` with capture reducers).
"""
from __future__ import annotations

import sys
from pathlib import Path

# this file's name shadows the `onnx` package when run as a script: drop its folder from the import path
# (equivalent to running `python -P bench/onnx.py`)
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def stage_speed(model, handle, n, batch, tmp):
    import chanaxis
    out = Path(tmp) / f"c{time.perf_counter_ns()}.zarr"
    t = time.perf_counter()
    chanaxis.capture(model, handle, out, n_calibration=n, chunk_images=batch, progress=False)
    return n / (time.perf_counter() - t)


def run_speed(model, batches, reducers):
    t = time.perf_counter()
    n = 0
    for x, red in zip(batches, reducers):
        model.run(x, capture=red)
        n += len(x)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--n", type=int, default=512, help="images per capture")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)  # the ONNX sessions take torch's thread count

    import chanaxis
    from chanaxis.adapters.onnx import export_onnx
    from chanaxis.data import calibration_indices
    from chanaxis.sampling import reducer as _reducer, spatial_positions

    tm = chanaxis.load_model(a.model, num_classes=10, image_size=32)
    handle = chanaxis.load_dataset(a.dataset, split="train", image_size=32)
    idx = calibration_indices(len(handle.dataset), a.n, 0)
    batches = [torch.stack([handle.dataset[int(i)][0] for i in idx[lo:lo + a.batch]])
               for lo in range(0, a.n, a.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        kept = Path(tmp) / "kept.onnx"
        export_onnx(tm, folded, "dynamo", fold_bn=True, kept_path=kept)
        models = {"torch": tm, "onnx (BN folded)": chanaxis.load_model(str(folded)),
                  "onnx (BN kept)": chanaxis.load_model(str(kept))}
        names = tm.graph.names
        reducers = []
        for k, x in enumerate(batches):  # capture's own reducers, at the same sampled positions
            lo = k * a.batch
            pos = {l: spatial_positions(a.n, tm.graph[l].out_hw[0] * tm.graph[l].out_hw[1], 16, 0,
                                        tm.graph[l].depth)[lo:lo + len(x)] for l in names}
            reducers.append({l: _reducer(torch.as_tensor(p)) for l, p in pos.items()})
        print(f"{a.model} at 32 px, random init, {a.n} {a.dataset} images, batch {a.batch}, {len(names)} layers, "
              f"{a.threads} threads (torch and onnxruntime), {a.repeats} alternating repeats")
        for m in models.values():  # warm-up: sessions built, caches filled
            stage_speed(m, handle, a.batch, a.batch, tmp)
        speeds = {(k, what): [] for k in models for what in ("stage", "run")}
        for _ in range(a.repeats):
            for k, m in models.items():
                speeds[(k, "stage")].append(stage_speed(m, handle, a.n, a.batch, tmp))
                speeds[(k, "run")].append(run_speed(m, batches, reducers))
        for what, label in (("stage", "capture stage"), ("run", "model pass with capture")):
            base = speeds[("torch", what)]
            print(f"  {label}: torch {statistics.median(base):7.1f} img/s")
            for k in list(models)[1:]:
                ratios = [o / t for o, t in zip(speeds[(k, what)], base)]
                print(f"    {k:17s} {statistics.median(speeds[(k, what)]):7.1f} img/s   onnxruntime ÷ torch "
                      f"{statistics.median(ratios):.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
