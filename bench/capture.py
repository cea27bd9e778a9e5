"""Capture throughput ÷ its bounds (same model, same images), and peak RSS of a capture at 1 000 vs 20 000 images.

    .venv/bin/python bench/capture.py [--quick]                          # 32 px Fashion-MNIST, float32 and float16
    .venv/bin/python bench/capture.py --dataset imagenet100 --data-root DIR  # 224 px JPEG folder (bench/jpeg_folder.py)

32 px (issue 13, goal 2): capture images/s ÷ min(plain forward, store write bound) ≥ 0.9 for resnet18,
mobilenetv2_100 and convnext_tiny, per storage dtype. The write bound is the folder's buffered write speed (measured
in every round) ÷ the bytes a capture writes per image (`store_bytes`: the sampled C-vectors in the store's dtype,
the float32 per-image means and the per-image records). RSS goal (issue 2): RSS(20k) / RSS(1k) ≤ 1.1.

224 px (issue 13, goal 1): capture images/s ÷ min(plain forward, loader alone) ≥ 0.9 for resnet18 and convnext_tiny,
the loader with all its workers (`chanaxis.data.loader.Loader`, the default worker count) timed alone on the same
images in the same round.

"Plain forward" is the model's eval forward (`model.module(x)` under no_grad) on the same images already in memory
(loaded before timing), the same batch size and the same torch threads: the compute a capture cannot avoid.
"Capture" is the whole `chanaxis.capture` call (config and weights hash, store creation, loader workers started,
samples written, chunks marked done); each store is deleted after its run. "Steady state" is the same call without
its once-per-capture part: the images after the first chunk ÷ the time from the first chunk's end to the call's end
(last writes and `finish` included) — what a capture of many more images tends to. At 32 px a "serial bound"
1/(1/forward + 1/write bound) is printed too: the rate if the forward and the writes could not overlap at all (on 2
cores both need the CPU: buffered writes are memory copies). Every round times every side once,
alternating, so machine noise hits all alike; the ratio is taken per round and its median shown. "cores" is the CPU
time of the process and its loader workers ÷ wall time: on a shared machine with autogroup scheduling a benchmark
gets about 2 ÷ (busy sessions) cores whatever it starts, and a figure is only comparable at a similar share.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import cpu_seconds, cpu_share_note


def timed(fn, n: int):
    """(images/s, cores used, fn's result) of one call that handles `n` images."""
    t, c = time.perf_counter(), cpu_seconds()
    r = fn()
    wall = time.perf_counter() - t
    return n / wall, (cpu_seconds() - c) / wall, r


def preload(handle, idx, batch):
    """The images of `idx` as batches in memory (loaded once, outside every timing)."""
    return [torch.stack([handle.dataset[int(i)][0] for i in idx[lo:lo + batch]]) for lo in range(0, len(idx), batch)]


def plain_forward(model, xs):
    model.module.eval()
    with torch.no_grad():
        for x in xs:
            model.module(x)


def model_pass(model, xs, n):
    """model.run with capture's own reducers, no store: the compute side of a capture."""
    from chanaxis.sampling import reducer as _reducer
    from chanaxis.sampling import spatial_positions
    g = model.graph
    pos = {l: torch.as_tensor(spatial_positions(n, int(np.prod(g[l].out_hw)), 16, 0, g[l].depth)) for l in g.names}
    lo = 0
    for x in xs:
        model.run(x, capture={l: _reducer(p[lo:lo + len(x)]) for l, p in pos.items()})
        lo += len(x)


def write_bandwidth(tmp, total_mb=512, block_mb=8):
    """Buffered write speed of the store's folder in MB/s: `total_mb` of random float32 in `block_mb` files (a
    capture's chunks are files of this order), written the way zarr writes chunks (one file each) into a temporary
    folder inside `tmp`, removed after."""
    block = np.random.default_rng(0).standard_normal(block_mb * 2 ** 18).astype(np.float32).tobytes()
    with tempfile.TemporaryDirectory(dir=tmp, prefix="bandwidth-") as d:
        t = time.perf_counter()
        for i in range(total_mb // block_mb):
            (Path(d) / f"{i}").write_bytes(block)
        speed = total_mb * 2 ** 20 / 1e6 / (time.perf_counter() - t)
    return speed


def bytes_per_image(model, dtype: str, spatial_samples: int = 16) -> int:
    """What a capture writes per image (capture's own `store_bytes`), without the once-per-store arrays."""
    from chanaxis.stages.capture import store_bytes
    g = model.graph
    layers = {l: (min(spatial_samples, int(np.prod(g[l].out_hw))), g[l].c_out) for l in g.names}
    return store_bytes(1, layers, dtype, model.num_classes)


@contextlib.contextmanager
def unit_clock():
    """Record when each capture unit (chunk) returns: the steady-state rate is the images after the first chunk ÷
    the time from the first chunk's end to the end of the call (the last writes and `finish` included); what it
    leaves out is the once-per-capture part (store creation, loader workers started, pipeline filled)."""
    from chanaxis.stages.capture import CaptureStage
    ends: list[float] = []
    orig = CaptureStage.run_unit

    def run_unit(self, run, unit, ctx):
        orig(self, run, unit, ctx)
        ends.append(time.perf_counter())
    CaptureStage.run_unit = run_unit
    try:
        yield ends
    finally:
        CaptureStage.run_unit = orig


def capture_run(model, dataset, n, batch, tmp, dtype, loader_workers=None):
    """The whole `chanaxis.capture`; the store is removed afterwards so that old runs' dirty pages do not slow the
    next one. Returns (images/s, steady-state images/s, cores used, bytes on disk per image)."""
    import chanaxis
    from chanaxis.safety import remove_store
    out = Path(tmp) / f"c{time.perf_counter_ns()}.zarr"
    with unit_clock() as ends:
        speed, cores, _ = timed(lambda: chanaxis.capture(model, dataset, out, n_calibration=n, chunk_images=batch,
                                                          dtype=dtype, progress=False, loader_workers=loader_workers),
                                n)
        done = time.perf_counter()
    steady = (n - min(n, batch)) / (done - ends[0]) if len(ends) > 1 else float("nan")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    remove_store(out)  # proves it is the chanaxis store just made, holding only its own files
    return speed, steady, cores, size / n


def runs_text(xs, fmt="{:.2f}"):
    return ", ".join(fmt.format(x) for x in xs)


def rss_child(n: int, model: str, out: str) -> None:
    import gc
    import resource

    import chanaxis
    m = chanaxis.load_model(model, num_classes=10, image_size=32)
    chanaxis.capture(m, "fashion-mnist", out, n_calibration=n, chunk_images=128, progress=False)
    gc.collect()  # the capture's loader goes, its worker processes are joined (and counted below)
    print(json.dumps({"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def bench_32(a, tmp) -> None:
    import chanaxis
    from chanaxis.data import calibration_indices
    n, batch, med = a.images, a.batch or 128, statistics.median
    handle = chanaxis.load_dataset("fashion-mnist")
    idx = calibration_indices(len(handle.dataset), n, 0)
    xs = preload(handle, idx, batch)
    dtypes = a.dtypes.split(",")
    print(f"capture vs min(plain forward, store write bound), {n} fashion-mnist images at 32 px, batch {batch}, "
          f"{torch.get_num_threads()} torch threads, loader workers {a.loader_workers or 'default'}, "
          f"{a.repeats} rounds; {cpu_share_note()}; stores under {tmp}")
    for name in a.models.split(","):
        model = chanaxis.load_model(name, num_classes=10, image_size=32)
        plain_forward(model, xs[:1])  # warm-up
        per_image = {d: bytes_per_image(model, d) for d in dtypes}
        fw, fwc, mp, wr = [], [], [], []
        cap = {d: {k: [] for k in ("speed", "steady", "cores", "ratio", "steady_ratio", "serial", "disk")}
               for d in dtypes}
        for r in range(a.repeats):
            wr.append(write_bandwidth(tmp))
            f, fc, _ = timed(lambda m=model: plain_forward(m, xs), n)
            fw.append(f)
            fwc.append(fc)
            if not a.no_model_pass:
                mp.append(timed(lambda m=model: model_pass(m, xs, n), n)[0])
            for d in (dtypes if r % 2 == 0 else dtypes[::-1]):
                c, cs, cc, disk = capture_run(model, handle, n, batch, tmp, d, loader_workers=a.loader_workers)
                w = wr[-1] * 1e6 / per_image[d]
                for k, v in (("speed", c), ("steady", cs), ("cores", cc), ("ratio", c / min(f, w)),
                             ("steady_ratio", cs / min(f, w)), ("serial", c * (1 / f + 1 / w)), ("disk", disk)):
                    cap[d][k].append(v)
        line = (f"  {name}: plain forward {med(fw):.1f} img/s ({med(fwc):.2f} cores; runs {runs_text(fw, '{:.1f}')})"
                + (f", model pass with reductions {med(mp):.1f} img/s ({med(m / f for m, f in zip(mp, fw)):.2f} "
                   f"of forward)" if mp else "") + f"; write speed {med(wr):.0f} MB/s (runs {runs_text(wr, '{:.0f}')})")
        print(line)
        for d in dtypes:
            c = cap[d]
            wb = med(wr) * 1e6 / per_image[d]
            print(f"    {d:8s} capture {med(c['speed']):6.1f} img/s ({med(c['cores']):.2f} cores; steady state "
                  f"{med(c['steady']):.1f}) | write bound {wb:6.0f} img/s ({per_image[d] / 1e6:.3f} MB/image; whole "
                  f"store {med(c['disk']) / 1e6:.3f} MB/image) | capture ÷ min(forward, write bound) "
                  f"**{med(c['ratio']):.2f}** (runs {runs_text(c['ratio'])}; steady state {med(c['steady_ratio']):.2f}"
                  f") | capture ÷ forward {med(s / f for s, f in zip(c['speed'], fw)):.2f} | capture ÷ serial bound "
                  f"1/(1/forward + 1/write bound) {med(c['serial']):.2f}", flush=True)
    if a.no_rss:
        return
    from chanaxis.safety import remove_store
    sizes = (500, 5000) if a.quick else (1000, 20000)
    res, wres = {}, {}
    for s in sizes:
        r = subprocess.run([sys.executable, __file__, "--rss-child", str(s), "mobilenetv2_100",
                            str(Path(tmp) / f"rss{s}.zarr")], capture_output=True, text=True, check=True)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        res[s], wres[s] = got["peak_rss_mb"], got["worker_peak_rss_mb"]
        remove_store(Path(tmp) / f"rss{s}.zarr")
    print(f"peak RSS of a capture (mobilenetv2_100, 32 px): {sizes[0]} images {res[sizes[0]]:.0f} MB, "
          f"{sizes[1]} images {res[sizes[1]]:.0f} MB, ratio {res[sizes[1]] / res[sizes[0]]:.3f}; largest loader "
          f"worker {wres[sizes[0]]:.0f} MB and {wres[sizes[1]]:.0f} MB (shared pages of the parent counted in both)")


def bench_224(a, tmp) -> None:
    from loader import jpeg_handle, loader_speed

    import chanaxis
    from chanaxis.data.loader import Loader
    n, batch, med = a.images, a.batch or 32, statistics.median
    handle = jpeg_handle(a.data_root, n) if a.make_folder else chanaxis.load_dataset(
        a.dataset, root=a.data_root)
    from chanaxis.data import calibration_indices
    idx = calibration_indices(len(handle.dataset), n, 0)  # the capture's own calibration images
    xs = preload(handle, idx, batch)  # also brings every file into the page cache
    loader = Loader(handle.dataset, workers=a.loader_workers)
    loader_speed(loader, idx[:2 * batch], batch)  # workers started
    print(f"capture vs min(plain forward, loader alone), {n} {a.dataset} images at {handle.image_size} px from "
          f"{handle.root}, batch {batch}, {torch.get_num_threads()} torch threads, loader {loader.workers} workers, "
          f"{a.repeats} rounds; {cpu_share_note()}; stores under {tmp}")
    for name in a.models.split(","):
        model = chanaxis.load_model(name, num_classes=handle.num_classes, image_size=handle.image_size)
        plain_forward(model, xs[:1])  # warm-up
        fw, fwc, ld, ldc, cp, cps, cpc, ratios, steady = [], [], [], [], [], [], [], [], []
        for r in range(a.repeats):
            sides = ["forward", "loader", "capture"]
            for side in sides[r % 3:] + sides[:r % 3]:
                if side == "forward":
                    f, fc, _ = timed(lambda m=model: plain_forward(m, xs), n)
                    fw.append(f)
                    fwc.append(fc)
                elif side == "loader":
                    s, sc = loader_speed(loader, idx, batch)
                    ld.append(s)
                    ldc.append(sc)
                else:
                    c, cs, cc, _ = capture_run(model, handle, n, batch, tmp, a.dtypes.split(",")[0],
                                               loader_workers=a.loader_workers)
                    cp.append(c)
                    cps.append(cs)
                    cpc.append(cc)
            ratios.append(cp[-1] / min(fw[-1], ld[-1]))
            steady.append(cps[-1] / min(fw[-1], ld[-1]))
            print(f"    round {r + 1}: forward {fw[-1]:.2f}, loader {ld[-1]:.1f}, capture {cp[-1]:.2f} img/s (steady "
                  f"state {cps[-1]:.2f}), ratio {ratios[-1]:.2f} (steady state {steady[-1]:.2f})", flush=True)
        print(f"  {name}: plain forward {med(fw):.2f} img/s ({med(fwc):.2f} cores) | loader alone {med(ld):.1f} img/s "
              f"({med(ldc):.2f} cores) | capture {med(cp):.2f} img/s ({med(cpc):.2f} cores; steady state "
              f"{med(cps):.2f}) | capture ÷ min(forward, loader) **{med(ratios):.2f}** (runs {runs_text(ratios)}); "
              f"steady state {med(steady):.2f} (runs {runs_text(steady)})", flush=True)
    loader.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images (a smoke run, noisier ratios)")
    ap.add_argument("--images", type=int, default=None, help="images per timed run (32 px: 1024; 224 px: 128)")
    ap.add_argument("--batch", type=int, default=None, help="batch = store chunk (32 px: 128; 224 px: 32)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--models", default=None, help="comma-separated (32 px: resnet18,mobilenetv2_100,convnext_tiny; "
                    "224 px: resnet18,convnext_tiny)")
    ap.add_argument("--dtypes", default="float32,float16", help="store dtypes (224 px: the first one)")
    ap.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "imagenet100"))
    ap.add_argument("--data-root", default=None, help="imagenet100: the JPEG folder")
    ap.add_argument("--make-folder", action="store_true",
                    help="imagenet100: generate the folder at --data-root first (bench/jpeg_folder.py)")
    ap.add_argument("--loader-workers", type=int, default=None, help="capture's and the loader's workers "
                    "(default: chanaxis's default, the usable cores)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--no-model-pass", action="store_true", help="32 px: skip the model-pass-with-reductions side")
    ap.add_argument("--no-rss", action="store_true", help="32 px: skip the peak-RSS part")
    ap.add_argument("--dir", default=None, help="where the timed stores are written (default: a temporary folder)")
    ap.add_argument("--rss-child", nargs=3, metavar=("N", "MODEL", "OUT"))
    a = ap.parse_args()
    if a.rss_child:
        return rss_child(int(a.rss_child[0]), a.rss_child[1], a.rss_child[2])
    torch.set_num_threads(a.threads)
    big = a.dataset == "imagenet100"
    a.images = a.images or ((64 if a.quick else 128) if big else (256 if a.quick else 1024))
    a.models = a.models or ("resnet18,convnext_tiny" if big else "resnet18,mobilenetv2_100,convnext_tiny")
    if big and not a.data_root:
        ap.error("--dataset imagenet100 needs --data-root (add --make-folder to generate one there)")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        (bench_224 if big else bench_32)(a, tmp)


if __name__ == "__main__":
    main()
