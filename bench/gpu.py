"""GPU throughput of chanaxis on ConvNeXt-T at 224 px, and the projected wall time of the paper preset on
ConvNeXt-T / ImageNet-100 on this GPU (issue 13). One command on a CUDA machine, from the repository root:

    bash bench/gpu.sh                         # sets up, generates the JPEG folder, runs this script (< 8 min)
    python bench/gpu.py [--device cuda]       # this script alone, chanaxis importable
    python bench/gpu.py --device cpu --tiny   # every code path at toy sizes on the CPU (tests/test_bench_gpu.py)

Results go to --out (default: $OUT when set, else bench/results/): gpu.txt (what is printed) and gpu.json; gpu.sh
adds gpu.log (everything, its set-up included). The project's CUDA machine has no network and lacks zarr and dask:
run `bash bench/gpu.sh --fetch-wheels` beside .venv first and send .whl/ along (the device tool: carry [".whl"]).

Data: a generated folder in ImageNet-100's on-disk format (`bench/jpeg_folder.py`: 500×375 RGB JPEGs at quality 90
in train/<wnid>/ and val/<wnid>/), read with `dataset="imagenet100"` through chanaxis' own loader (eval transform:
resize 256, centre crop 224, decoded on the GPU by nvjpeg on CUDA; train transform: RandomResizedCrop + flip,
decoded by PIL in the worker processes). Model: `convnext_tiny` from timm with 100 classes, seeded random init (no
weights can be downloaded; timing does not depend on the weights). Every figure is the median of --repeats runs
after an untimed warm-up, with `torch.cuda.synchronize()` before each clock read; the sides of each comparison
alternate within a repeat so that drifting clocks hit them alike.

1. Forward vs capture (fp32 and bf16 autocast), images/s over the same --images calibration images:
   loader alone (all workers, batches delivered on the device); plain eval forward `model.module(x)` on batches
   already on the device; "model pass": `model.run` with capture's own reductions (16 sampled C-vectors and the
   per-image mean of every analysed layer) with the samples copied to host memory, no store; and the whole
   `chanaxis.capture(...)` stage (its own loader and workers, store made, samples written, each store deleted
   after its run). The store folder's buffered write speed is measured too: together they say whether decode,
   compute or the store bounds capture.
2. Lesions, in channel·images/s: for every analysed layer (or --lesion-layers of them, spread over the depth),
   the suffix machinery of the lesion stage exactly as `layer_damages` drives it (`SuffixRunner`: the fx split,
   the prefix once per batch, one suffix pass per lesion variant at the preset's batch_size = 256 images, so one
   lesion per pass) timed piece by piece: split, prefix, a single-channel lesion pass (outcome sums included) and
   a peer-replacement pass (the stage's `replacer` with 10 random peers and random weights; the ridge fits from the
   stored moments, numpy on the CPU, are not timed). One end-to-end `layer_damages` call on a middle layer checks
   that the pieces add up. fp32 (the preset's precision) and bf16 autocast.
3. Fine-tuning, images/s: `chanaxis.interventions.finetune.finetune` end to end (deepcopy of the model, masks
   of a 50 % random pruning plan re-applied after every Adam step, train-transform images from the loader's
   workers), bf16 and fp32; the train loader alone; and the bare steps on batches already on the device: as the
   train stage runs them (Adam, batch 64, channels_last, deterministic algorithms, the train stage's precision)
   and as finetune runs them (batch 128).
4. Optionally (when the time budget leaves room): the whole `chanaxis.metrics` stage on the fp32 store of part 1,
   in a subprocess with a timeout (a mostly-CPU stage: numpy/dask covariances, hulls, clustering, modularity, and a
   GPU geometry pass).
5. Projection of `chanaxis analyze convnext_tiny --dataset imagenet100 --preset paper` on this machine: the counts
   come from the real preset objects (`chanaxis.study.study_params("paper")`, the card's recipe, the default
   checkpoint schedule, the pruning methods), ImageNet-100 has 126 689 training and 5 000 validation images, and
   each count is multiplied by the per-image cost measured above; the assumptions are printed with the table.
   A stage not measured here says so and is left out of the total (or enters as a stated bound).

--tiny: test_convnext at 64 px on a handful of images (every code path in well under a minute on a CPU; its figures
mean nothing). --budget: seconds this script may take; optional parts are skipped, repeats and the lesion layers cut
short to stay inside it (gpu.sh passes what is left of its 450 s after the set-up). A section that fails is printed
with its traceback and recorded ("error" in gpu.json) while the others still run; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/ off the path (its onnx.py, capture.py, ... would shadow real modules); chanaxis from the checkout when it is
# not installed; jpeg_folder loaded from its file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("jpeg_folder", HERE / "jpeg_folder.py")
jpeg_folder = sys.modules["jpeg_folder"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(jpeg_folder)

IMAGENET100_TRAIN = 126_689  # ImageNet-1k's training images of the 100 synsets of imagenet100_wnids.txt
IMAGENET100_VAL = 5_000
PRECISIONS = ("fp32", "bf16")
HULL_PEERS = 10  # metrics' hull_max: the size of a replacement's peer set at most


# ------------------------------------------------------------------------------------------------ plumbing
class Bench:
    """Prints, records into a JSON-able dict (written after every section), keeps the time budget."""

    def __init__(self, out: Path, budget: float, device: str):
        self.out, self.device = out, torch.device(device)
        self.t0 = time.perf_counter()
        self.budget = budget
        self.res: dict = {}
        self.lines: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def say(self, s: str = "") -> None:
        print(s, flush=True)
        self.lines.append(s)

    def section(self, title: str) -> None:
        self.say("")
        self.say(f"== {title} " + "=" * max(0, 96 - len(title)) + f" [{self.elapsed():4.0f} s]")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn):
        """(seconds, result) of fn(), the device synchronised before both clock reads."""
        self.sync()
        t = time.perf_counter()
        r = fn()
        self.sync()
        return time.perf_counter() - t, r

    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.res, indent=1, default=_jsonable))
        (self.out / "gpu.txt").write_text("\n".join(self.lines) + "\n")


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def med(xs) -> float:
    return float(statistics.median(xs))


def runs(xs, fmt="{:.0f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ data
def _one_jpeg(job) -> None:
    from PIL import Image
    path, seed, k, j, val, size = job
    if not Path(path).exists():
        rng = np.random.default_rng([seed, k, j, val])
        Image.fromarray(jpeg_folder.photo(rng, *size)).save(path, quality=90)


def make_folder(root: Path, per_class: int, classes: int, val_per_class: int, procs: int, b: Bench) -> Path:
    """`jpeg_folder.make(root, per_class, classes, val_per_class)` with its images encoded by `procs` processes:
    the same files (checked on one image against `make` itself), then `make` fills in anything missing."""
    from chanaxis.data.cards import package_text
    t = time.perf_counter()
    wnids = [w for w in package_text("imagenet100_wnids.txt").split() if w.strip()][:classes]
    jobs = []
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, w in enumerate(wnids):
            (root / split / w).mkdir(parents=True, exist_ok=True)
            jobs += [(str(root / split / w / f"{w}_{j}.JPEG"), 0, k, j, split == "val", (500, 375)) for j in range(n)]
    with tempfile.TemporaryDirectory() as ref:  # one image by `make` itself: the parallel encoder must equal it
        jpeg_folder.make(ref, per_class=1, classes=1, val_per_class=0)
        ref_file = Path(ref) / "train" / wnids[0] / f"{wnids[0]}_0.JPEG"
        mine = Path(ref) / "mine.JPEG"  # the same image (seed 0, class 0, image 0) by the parallel encoder
        _one_jpeg((str(mine), 0, 0, 0, False, (500, 375)))
        same = mine.read_bytes() == ref_file.read_bytes()
    if same and procs > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(procs) as pool:
            pool.map(_one_jpeg, jobs, chunksize=8)
    elif not same:
        b.say("  (the parallel encoder differs from jpeg_folder.make: the folder is made by make alone)")
    jpeg_folder.make(root, per_class, classes, val_per_class)  # whatever is still missing (all, when not same)
    n = sum(1 for _ in root.rglob("*.JPEG"))
    mb = sum(f.stat().st_size for f in root.rglob("*.JPEG")) / 1e6
    b.say(f"JPEG folder {root}: {n} images ({classes} classes × {per_class} train + {val_per_class} val), "
          f"500×375 q90, {mb / max(n, 1) * 1e3:.0f} kB each, made in {time.perf_counter() - t:.1f} s "
          f"({procs} processes)")
    return root


def write_speed(folder: Path, total_mb: int) -> float:
    """Buffered write speed (MB/s) of `folder`: `total_mb` of float32 in 8 MiB files, as zarr writes chunks (into
    a temporary folder inside `folder`, removed after)."""
    block_mb = min(8, total_mb)
    block = np.random.default_rng(0).standard_normal(block_mb * 2 ** 18).astype(np.float32).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="bandwidth-") as d:
        t = time.perf_counter()
        for i in range(max(1, total_mb // block_mb)):
            (Path(d) / f"{i}").write_bytes(block)
        speed = max(1, total_mb // block_mb) * block_mb * 2 ** 20 / 1e6 / (time.perf_counter() - t)
    return speed


def drop_store(b: Bench, store: str | Path) -> None:
    """Delete a store this script had chanaxis write, through `chanaxis.safety.remove_store` (which proves it is a
    chanaxis store holding only its own files); one never made is nothing to delete, one it cannot prove is left
    (and said)."""
    from chanaxis.errors import ChanaxisError
    from chanaxis.safety import remove_store
    store = Path(store)
    if not store.exists():
        return
    try:
        remove_store(store)
    except ChanaxisError as e:
        b.say(f"  (left {store}: {e})")


def timed_repeats(b: Bench, a, load_all, rates: list):
    """The repeats of a section's measurements, each opened by timing the loader alone (images/s into `rates`); a
    repeat after the first starts only while the time budget keeps `a.reserve` seconds for the sections after."""
    for rep in range(a.repeats):
        if rep and b.left() < a.reserve:
            b.say(f"  (time budget: stopping after {rep} repeat(s))")
            break
        t, k = b.timed(load_all)
        rates.append(k / t)
        yield rep


# ------------------------------------------------------------------------------------------------ 1. capture
def bench_capture(b: Bench, a, model, handle, work: Path) -> dict:
    import chanaxis
    from chanaxis import precision as prec
    from chanaxis.data import calibration_indices
    from chanaxis.data.loader import Loader
    from chanaxis.sampling import reducer, spatial_positions

    b.section(f"1. forward vs capture: {a.model} at {a.image_size} px, {a.images} images, batch {a.batch}, "
              f"{a.workers} loader workers")
    dev, n, bs = a.device, a.images, a.batch
    idx = calibration_indices(len(handle.dataset), n, 0)  # capture's own calibration subset (seed 0)
    n = len(idx)
    mbps = write_speed(work, a.write_mb)
    b.say(f"store folder {work}: buffered write speed {mbps:.0f} MB/s ({a.write_mb} MiB in 8 MiB files)")

    loader = Loader(handle.dataset, workers=a.workers, device=dev)
    for _ in loader.batches(idx[:2 * bs], bs):  # workers started, decoder warm
        pass

    def load_all():
        k = 0
        for x, _ in loader.batches(idx, bs):
            k += len(x)
        return k

    xs = [x for x, _ in loader.batches(idx, bs)]  # the images on the device, for the forward sides
    g = model.graph
    pos = {l: torch.as_tensor(spatial_positions(n, int(np.prod(g[l].out_hw)), 16, 0, g[l].depth),
                              dtype=torch.long, device=dev) for l in g.names}
    module = model.module.eval()

    def forward(p):
        with torch.no_grad(), prec.autocast(p, dev, model):
            for x in xs:
                module(x)

    def model_pass(p):
        nbytes = 0
        with prec.autocast(p, dev, model):
            for k, x in enumerate(xs):
                lo, hi = k * bs, k * bs + len(x)
                logits, caps = model.run(x, capture={l: reducer(v[lo:hi]) for l, v in pos.items()})
                for local, gap in caps.values():  # to host memory (float32), as capture does before writing
                    nbytes += local.float().cpu().numpy().nbytes + gap.float().cpu().numpy().nbytes
                logits.float().cpu()
        return nbytes

    stores: list[Path] = []

    def capture(p, n_images):
        out = work / f"store_{p}_{time.perf_counter_ns()}.zarr"
        stores.append(out)
        chanaxis.capture(model, handle, out, n_calibration=n_images, chunk_images=bs, precision=p,
                         loader_workers=a.workers, progress=False)
        return out

    def drop(out: Path):
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        drop_store(b, out)
        return size

    # warm-up: every side once, untimed (kernels chosen, autocast caches, zarr imported, workers forked)
    for p in PRECISIONS:
        with torch.no_grad(), prec.autocast(p, dev, model):
            module(xs[0])
        with prec.autocast(p, dev, model):
            model.run(xs[0], capture={l: reducer(v[:len(xs[0])]) for l, v in pos.items()})
    for p in PRECISIONS:
        try:
            drop(capture(p, min(n, bs)))
        except Exception:  # noqa: BLE001 - the timed runs below report it
            drop_store(b, stores[-1])

    r: dict = {"images": n, "batch": bs, "workers": a.workers, "write_MBps": mbps,
               "device_decode": bool(loader.device_decode), "loader": [], **{p: {"forward": [], "model_pass": [],
                                                                                   "capture": []} for p in PRECISIONS}}
    per_image_bytes = 0.0
    keep = None
    for _ in timed_repeats(b, a, load_all, r["loader"]):
        for p in PRECISIONS:
            t, _ = b.timed(lambda: forward(p))
            r[p]["forward"].append(n / t)
            t, nbytes = b.timed(lambda: model_pass(p))
            r[p]["model_pass"].append(n / t)
            r["host_bytes_per_image"] = nbytes / n
            try:
                t, out = b.timed(lambda: capture(p, n))
            except Exception as e:  # noqa: BLE001 - recorded and shown; the other measurements go on
                msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                r[p]["capture_error"] = f"{type(e).__name__}: {msg}"
                b.say(f"  chanaxis.capture(precision={p!r}) FAILED: {r[p]['capture_error']}")
                drop_store(b, stores[-1])
                continue
            r[p]["capture"].append(n / t)
            if p == "fp32" and a.metrics and keep is None:
                keep = out  # the metrics part runs on this store
                per_image_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / n
            else:
                per_image_bytes = drop(out) / n
    loader.close()
    xs.clear()  # the device copies of the images go
    r["store_bytes_per_image"] = per_image_bytes
    r["kept_store"] = str(keep) if keep else None
    for s in stores:
        if s != keep:
            drop_store(b, s)
    lo = r["loader"]
    b.say(f"loader alone ({'nvjpeg decode on the device' if r['device_decode'] else 'decode in the workers'}), "
          f"images/s: {med(lo):8.0f}   (runs {runs(lo)})")
    b.say(f"{'images/s':34s} {'fp32':>10s} {'bf16':>10s}   runs fp32 | bf16")
    names = {"forward": "plain eval forward (on device)", "model_pass": "model pass + reductions + to host",
             "capture": "chanaxis.capture (whole stage)"}

    def m(v):
        return med(v) if v else float("nan")

    for k, label in names.items():
        f, h = r["fp32"][k], r["bf16"][k]
        b.say(f"{label:34s} {m(f):10.0f} {m(h):10.0f}   {runs(f)} | {runs(h)}")
    for p in PRECISIONS:
        r[p].update({f"{k}_median": m(r[p][k]) for k in names})
        r[p]["capture_over_forward"] = r[p]["capture_median"] / r[p]["forward_median"]
    r["loader_median"] = med(lo)
    b.say(f"capture ÷ forward: fp32 {r['fp32']['capture_over_forward']:.2f}, bf16 "
          f"{r['bf16']['capture_over_forward']:.2f}; store {per_image_bytes / 1e6:.2f} MB/image, i.e. capture "
          f"writes {r['fp32']['capture_median'] * per_image_bytes / 1e6:.0f} MB/s (fp32) against "
          f"{mbps:.0f} MB/s buffered; host copy {r['host_bytes_per_image'] / 1e6:.2f} MB/image")
    bound = min((r["loader_median"], "the loader (decode)"), (r["fp32"]["model_pass_median"], "the model pass"),
                (mbps * 1e6 / max(per_image_bytes, 1), "the store folder's write speed"))
    b.say(f"slowest of the parts (fp32): {bound[1]} at {bound[0]:.0f} images/s")
    b.res["capture"] = r
    b.save()
    return r


# ------------------------------------------------------------------------------------------------ 2. lesions
def bench_lesion(b: Bench, a, model, eval_handle, lesion_params) -> dict:
    from chanaxis import precision as prec
    from chanaxis.data.loader import Loader
    from chanaxis.evaluation import outcome_sums
    from chanaxis.interventions.lesion import layer_damages
    from chanaxis.interventions.masks import lesion_variants
    from chanaxis.interventions.replace import replacer
    from chanaxis.interventions.suffix import SuffixRunner

    dev = a.device
    bs = lesion_params.batch_size
    n_img = min(a.lesion_images, len(eval_handle.dataset), bs)
    names = model.graph.names
    if a.lesion_layers and a.lesion_layers < len(names):
        pick = np.unique(np.linspace(0, len(names) - 1, a.lesion_layers).round().astype(int))
        names = [names[i] for i in pick]
    # measured in an order that covers the depth first (bit-reversed positions): a run cut short by the time
    # budget still has layers from every depth for the projection's nearest-layer stand-ins
    bits = max(1, (len(names) - 1).bit_length())
    order = sorted(range(len(names)), key=lambda i: int(f"{i:0{bits}b}"[::-1], 2))
    b.section(f"2. lesions: {len(names)} of {len(model.graph.names)} layers; one lesion per suffix pass over "
              f"{n_img} validation images (the paper preset: batch_size {bs} on {IMAGENET100_VAL} images, "
              f"{max(1, bs // min(bs, IMAGENET100_VAL))} per pass)")
    loader = Loader(eval_handle.dataset, workers=a.workers, device=dev)
    x, y = loader.images(np.arange(n_img))  # host memory, as the lesion stage holds its evaluation images
    loader.close()
    passes = a.lesion_passes
    rng = np.random.default_rng(0)
    r: dict = {"images": n_img, "batch_size": bs, "passes": passes, "layers": {}}
    precs = list(PRECISIONS)
    for p in precs:
        r[p] = {}
    # warm-up: one layer through each precision (fx trace of the module, kernels)
    for p in precs:
        with prec.autocast(p, dev, model):
            w = SuffixRunner(model, names[len(names) // 2])
            outcome_sums(w.run(w.prefix(x), mask=lesion_variants(w.layer.c_out, [0])), y)
    for j, li in enumerate(order):
        name = names[li]
        if j >= 3 and b.left() < a.reserve / 2:
            b.say(f"  (time budget: {j} of {len(names)} layers measured)")
            break
        spec = model.graph[name]
        c = spec.c_out
        row = {"c_out": c, "depth": spec.depth, "kind": spec.kind}
        for p in precs:
            if p == "bf16" and b.left() < a.reserve:
                row[p] = None
                continue
            with prec.autocast(p, dev, model):
                t_build, runner = b.timed(lambda: SuffixRunner(model, name))
                t_pre, cache = b.timed(lambda: runner.prefix(x))
                masks = lesion_variants(c, np.arange(passes + 1) % c)
                outcome_sums(runner.run(cache, mask=masks[:1]), y)  # this layer's shapes once, untimed
                tm = [b.timed(lambda: outcome_sums(runner.run(cache, mask=masks[k:k + 1]), y))[0]
                      for k in range(1, passes + 1)]
                tr = []
                for k in range(passes):
                    t_ch = np.asarray([k % c])
                    B = np.zeros((1, c), np.float32)
                    peers = rng.choice(np.delete(np.arange(c), t_ch[0]), min(HULL_PEERS, c - 1), replace=False)
                    B[0, peers] = rng.standard_normal(len(peers)) / max(1, len(peers))
                    fn = replacer(t_ch, B, np.zeros(1, np.float32), spec.layout)
                    tr.append(b.timed(lambda: outcome_sums(runner.run(cache, replace=fn, k=1), y))[0])
            row[p] = {"build_s": t_build, "prefix_s": t_pre, "mask_pass_s": med(tm), "replace_pass_s": med(tr),
                      "mode": runner.mode}
            cache = None  # noqa: F841 - frees the prefix before the next layer
        r["layers"][name] = row
    r["layers"] = {n: r["layers"][n] for n in names if n in r["layers"]}  # in depth order
    # aggregate: channel·images/s over the measured layers, weighted as the preset lesions them
    frac = 1.0 if lesion_params.all_channels else lesion_params.fraction
    for p in precs:
        rows = [(max(1, int(round(frac * v["c_out"]))), v[p]) for v in r["layers"].values() if v.get(p)]
        if not rows:
            r[p] = None
            continue
        n_les = sum(k for k, _ in rows)
        t_mask = sum(k * v["mask_pass_s"] for k, v in rows)
        t_repl = sum(k * v["replace_pass_s"] for k, v in rows)
        r[p] = {"channel_images_per_s": n_les * n_img / t_mask, "replace_channel_images_per_s": n_les * n_img / t_repl,
                "modes": sorted({v["mode"] for _, v in rows}), "layers_measured": len(rows)}
    # one end-to-end layer_damages on a middle layer: do the pieces add up?
    mid = names[order[min(2, len(order) - 1)]]
    k_ch = min(a.e2e_channels, model.graph[mid].c_out)
    ch = np.arange(k_ch)
    with prec.autocast("fp32", dev, model):
        t, _ = b.timed(lambda: layer_damages(model, mid, x, y, ch, (0.0, 0.0), batch_size=bs, suffix=True))
    v = r["layers"][mid]["fp32"]
    pred = v["build_s"] + v["prefix_s"] + k_ch * v["mask_pass_s"]
    r["end_to_end"] = {"layer": mid, "channels": k_ch, "seconds": t, "predicted_seconds": pred,
                       "channel_images_per_s": k_ch * n_img / t}
    b.say(f"{'layer':34s} {'C':>5s} {'split s':>8s} {'prefix s':>9s} {'lesion pass ms':>15s} "
          f"{'replace pass ms':>16s} {'bf16 lesion ms':>15s}")
    for name, v in r["layers"].items():
        f, h = v["fp32"], v.get("bf16")
        b.say(f"{name:34s} {v['c_out']:5d} {f['build_s']:8.2f} {f['prefix_s']:9.3f} {f['mask_pass_s'] * 1e3:15.1f} "
              f"{f['replace_pass_s'] * 1e3:16.1f} {(h['mask_pass_s'] * 1e3 if h else float('nan')):15.1f}")
    for p in precs:
        if r[p]:
            b.say(f"lesion throughput {p}: {r[p]['channel_images_per_s']:.0f} channel·images/s (lesions), "
                  f"{r[p]['replace_channel_images_per_s']:.0f} (peer replacements); {n_img} images per pass, "
                  f"{r[p]['layers_measured']} layers weighted by their lesioned channels ({frac:g} of each); "
                  f"execution: {', '.join(r[p]['modes'])}")
    e = r["end_to_end"]
    b.say(f"end to end: layer_damages({mid}, {k_ch} channels, {n_img} images) {e['seconds']:.2f} s = "
          f"{e['channel_images_per_s']:.0f} channel·images/s; split + prefix + passes measured above add up to "
          f"{pred:.2f} s")
    b.res["lesion"] = r
    b.save()
    return r


# ------------------------------------------------------------------------------------------------ 3. fine-tune
def bench_finetune(b: Bench, a, model, train_handle, prune_params, train_precision: str) -> dict:
    from chanaxis import precision as prec
    from chanaxis.data.loader import Loader, item_seeds
    from chanaxis.interventions.finetune import finetune
    from chanaxis.interventions.masks import PruningPlan, random_keep
    import torch.nn.functional as F

    dev = a.device
    bs = a.ft_batch or prune_params.batch_size
    n_train = len(train_handle.dataset)
    nb = max(1, min(a.ft_batches, n_train // bs))
    n = nb * bs
    b.section(f"3. fine-tuning: {nb} batches of {bs} train-transform images, {a.workers} loader workers")
    loader = Loader(train_handle.dataset, workers=a.workers, device=dev)
    order = np.random.default_rng(0).permutation(n_train)[:n]
    seeds = item_seeds(0, 0, n)
    for _ in loader.batches(order[:2 * bs], bs, seeds=seeds[:2 * bs]):
        pass

    def load_all():
        k = 0
        for xb, _ in loader.batches(order, bs, seeds=seeds):
            k += len(xb)
        return k

    r: dict = {"batch": bs, "batches": nb, "loader": [], "step": {}, "finetune": {p: [] for p in PRECISIONS}}
    batches = list(loader.batches(order, bs, seeds=seeds))  # on the device, for the bare steps
    xall, yall = torch.cat([xb for xb, _ in batches]), torch.cat([yb for _, yb in batches])
    batches.clear()

    def step_rate(batch: int, p: str, deterministic: bool) -> float:
        net = prec.to_device_layout(copy.deepcopy(model.module), dev).train()
        opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-3, weight_decay=1e-4)
        det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        bench_flag = torch.backends.cudnn.benchmark
        if deterministic:  # as the train stage runs its epochs
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            def step(lo):
                xb, yb = xall[lo:lo + batch], yall[lo:lo + batch]
                with prec.autocast(p, dev):
                    loss = F.cross_entropy(net(prec.input_layout(xb, dev)).float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            starts = list(range(0, len(xall) - batch + 1, batch))
            for lo in starts[:2]:
                step(lo)  # warm-up
            t, _ = b.timed(lambda: [step(lo) for lo in starts])
            return len(starts) * batch / t
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn)
            torch.backends.cudnn.benchmark = bench_flag

    plan = PruningPlan(model)
    eff = plan.effective(random_keep(plan, 0.5, seed=0))
    lr = prune_params.lr

    def ft(p, batches_):
        return finetune(model, eff, loader, epochs=1, max_batches=batches_, lr=lr, seed=42, batch_size=bs,
                        precision=p)

    for p in PRECISIONS:
        ft(p, 1)  # warm-up (workers already up; kernels, autocast)
    steps = {"train stage": (a.train_batch, train_precision, True),
             "finetune bf16": (bs, "bf16", False), "finetune fp32": (bs, "fp32", False)}
    for _ in timed_repeats(b, a, load_all, r["loader"]):
        for p in PRECISIONS:
            t, net = b.timed(lambda: ft(p, nb))
            del net
            r["finetune"][p].append(n / t)
        for key, (batch, p, det) in steps.items():
            r["step"].setdefault(key, []).append(step_rate(min(batch, len(xall)), p, det))
    loader.close()
    r["loader_median"] = med(r["loader"])
    r["finetune_median"] = {p: med(v) for p, v in r["finetune"].items()}
    r["step_median"] = {k: med(v) for k, v in r["step"].items()}
    r["train_stage"] = {"batch": a.train_batch, "precision": train_precision}
    b.say(f"train loader alone (PIL decode + RandomResizedCrop + flip in the workers), images/s: "
          f"{r['loader_median']:8.0f}   (runs {runs(r['loader'])})")
    for p in PRECISIONS:
        b.say(f"finetune() end to end, {p}, images/s:{'':22s}{r['finetune_median'][p]:8.0f}   "
              f"(runs {runs(r['finetune'][p])})")
    for key, (batch, p, det) in steps.items():
        what = "Adam step, channels_last" + (", deterministic algorithms" if det else "")
        b.say(f"bare {what}, batch {min(batch, len(xall))}, {p} ({key}), images/s: "
              f"{r['step_median'][key]:8.0f}   (runs {runs(r['step'][key])})")
    b.res["finetune"] = r
    b.save()
    return r


# ------------------------------------------------------------------------------------------------ 4. metrics
def bench_metrics(b: Bench, a, store: str | None, n_images: int) -> dict:
    b.section("4. metrics stage (optional) on the fp32 store of part 1")
    if store is None:
        b.say("skipped: part 1 left no fp32 store")
        return {"skipped": "no fp32 store from part 1"}
    limit = min(a.metrics_timeout, b.left() - a.reserve)
    if limit < a.metrics_min:
        b.say(f"skipped: {max(0.0, b.left()):.0f} s of the budget left (needs {a.metrics_min + a.reserve:.0f} s)")
        drop_store(b, store)
        r = {"skipped": "time budget"}
        b.res["metrics"] = r
        b.save()
        return r
    code = ("import json, sys, time, chanaxis\n"
            "t = time.perf_counter()\n"
            f"chanaxis.metrics({store!r}, device={a.device!r}, progress=False, **{a.metrics_params!r})\n"
            "print('METRICS_SECONDS', time.perf_counter() - t)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t = time.perf_counter()
    # its own process group, so that a timeout also ends the loader workers it forked
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)

    def stop(signum, frame):  # this script stopped from outside (gpu.sh's timeout): the child group goes too
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(128 + signum)
    old = signal.signal(signal.SIGTERM, stop)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
        secs = next((float(l.split()[1]) for l in stdout.splitlines() if l.startswith("METRICS_SECONDS")), None)
        if secs is None:
            tail = (stderr or stdout).strip().splitlines()[-3:]
            r = {"error": " | ".join(tail)}
            b.say(f"failed: {r['error']}")
        else:
            r = {"seconds": secs, "images": n_images, "wall_s": time.perf_counter() - t}
            b.say(f"chanaxis.metrics on {n_images} images × 16 samples, every analysed layer"
                  + (f" ({', '.join(f'{k}={v}' for k, v in a.metrics_params.items())})" if a.metrics_params else
                     " (the paper preset's parameters)") + f": {secs:.1f} s")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        r = {"timed_out_after_s": limit, "images": n_images}
        b.say(f"did not finish within {limit:.0f} s (the rest of the time budget): at least that long")
    finally:
        signal.signal(signal.SIGTERM, old)
    drop_store(b, store)
    b.res["metrics"] = r
    b.save()
    return r


# ------------------------------------------------------------------------------------------------ 5. projection
def num(d, *keys) -> float:
    """d[k0][k1]... as a float; NaN where a part is missing (a section that failed or was skipped)."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return float("nan")
        d = d[k]
    try:
        return float(d)
    except (TypeError, ValueError):
        return float("nan")


def nmin(*xs) -> float:
    """min, NaN when any is NaN (Python's min ignores a NaN in some positions)."""
    return float("nan") if any(not math.isfinite(x) for x in xs) else min(xs)


def projection(b: Bench, a, model, cap: dict, les: dict, fin: dict, met: dict) -> dict:
    from chanaxis import precision as prec
    from chanaxis.data import get_card
    from chanaxis.interventions import scores as sc
    from chanaxis.interventions.lesion import REPLACE_KINDS
    from chanaxis.study import study_params
    from chanaxis.training import parse_schedule

    P = study_params("paper")
    recipe = get_card("imagenet100").recipe
    dev = a.device
    n_train, n_val = IMAGENET100_TRAIN, IMAGENET100_VAL
    b.section(f"5. projection: chanaxis analyze convnext_tiny --dataset imagenet100 --preset paper, on this "
              f"machine ({b.res['meta']['device_name']})")
    if a.tiny:
        b.say(f"(--tiny: measured on {a.model} at {a.image_size} px; these figures mean nothing)")
    rows: list[dict] = []

    def add(stage, work, secs, basis, alt=None):
        rows.append({"stage": stage, "work": work, "seconds": secs, "seconds_bf16": alt, "basis": basis,
                     "measured": math.isfinite(secs)})

    fwd = {p: num(cap, p, "forward_median") for p in PRECISIONS}
    c_rate = {p: num(cap, p, "capture_median") for p in PRECISIONS}
    eval_load = num(cap, "loader_median")  # eval-transform images/s through the loader

    # train: the card's recipe (30 epochs, batch 64, Adam), precision auto (bf16 on CUDA), an evaluation of the
    # validation split at initialisation and after every epoch
    tp = P["train"]
    epochs = int(tp.epochs or recipe["epochs"])
    tbatch = int(tp.batch_size or recipe["batch_size"])
    n_tr = min(n_train, tp.train_subset or n_train)
    n_ev = min(n_val, tp.eval_subset or n_val)
    t_prec = prec.resolve(tp.precision, dev)
    step, tr_load = num(fin, "step_median", "train stage"), num(fin, "loader_median")
    ev_rate = nmin(fwd[t_prec], eval_load)
    add("train", f"{epochs} epochs × {n_tr} images, batch {tbatch}, {t_prec}; {epochs + 1} evaluations × {n_ev}",
        epochs * n_tr / nmin(step, tr_load) + (epochs + 1) * n_ev / ev_rate,
        f"min(bare step {step:.0f}, train loader {tr_load:.0f}) img/s; evaluation at min(forward, loader) "
        f"{ev_rate:.0f} img/s")

    # capture: n_calibration images at the preset's precision
    cp = P["capture"]
    add("capture", f"{cp.n_calibration} images, {cp.precision}, {cp.dtype} store "
                   f"({cp.n_calibration * num(cap, 'store_bytes_per_image') / 1e9:.1f} GB)",
        cp.n_calibration / c_rate[cp.precision], f"capture {c_rate[cp.precision]:.0f} img/s",
        cp.n_calibration / c_rate["bf16"])

    # metrics: measured on the small store and scaled (an upper bound), or not measured
    m_hi = None
    if met.get("seconds"):
        m_lo, m_hi = met["seconds"], met["seconds"] * cp.n_calibration / met["images"]
        add("metrics", f"{len(model.graph)} layers, {cp.n_calibration} images × {cp.spatial_samples} samples",
            m_hi, f"measured {m_lo:.0f} s on {met['images']} images; shown: × {cp.n_calibration}/{met['images']} "
                  f"(an upper bound: only the covariances grow with the images; at least {hms(m_lo)})")
    elif met.get("timed_out_after_s"):
        add("metrics", f"{len(model.graph)} layers", float("nan"),
            f"not measured: did not finish on {met['images']} images within {met['timed_out_after_s']:.0f} s; "
            "left out of the total")
    else:
        add("metrics", f"{len(model.graph)} layers", float("nan"),
            f"not measured ({met.get('error') or met.get('skipped') or 'mostly CPU: bench/metrics.py'}); left out "
            "of the total")

    # trajectory: capture + metrics (local, target + grad_cos) at every checkpoint of the default schedule
    trp = P["trajectory"]
    n_ck = len(parse_schedule(tp.checkpoints, epochs))
    t_cap = n_ck * trp.n_calibration / c_rate["fp32"]  # the trajectory captures in fp32
    if m_hi is not None:
        add("trajectory", f"{n_ck} checkpoints × ({trp.n_calibration} images captured + metrics)",
            t_cap + n_ck * m_hi * trp.n_calibration / cp.n_calibration,
            f"capture as above + the metrics row per checkpoint (an upper bound: the trajectory computes local + "
            f"target only); capture alone {hms(t_cap)}")
    else:
        add("trajectory", f"{n_ck} checkpoints × {trp.n_calibration} images captured (+ metrics, not measured)",
            t_cap, "capture only: the per-checkpoint metrics are not measured (a lower bound)")

    # lesion: every layer, fraction × channels, all eval images, 1 lesion + 4 replacements per channel
    lp = P["lesion"]
    n_eval = n_val if lp.eval_images is None else min(n_val, lp.eval_images)
    frac = 1.0 if lp.all_channels else lp.fraction
    n_rep = len(REPLACE_KINDS) if lp.replace else 0
    measured = dict((les or {}).get("layers") or {})
    depth_of = {n: i for i, n in enumerate(model.graph.names)}
    n_les_all = sum(c if lp.all_channels else max(1, int(round(frac * c)))
                    for c in (l.c_out for l in model.graph.layers))

    def lesion_secs(p):
        if not measured:
            return float("nan")
        tot = 0.0
        for i, name in enumerate(model.graph.names):
            ref = measured.get(name) or measured[min(measured, key=lambda m: abs(depth_of[m] - i))]
            v = ref.get(p)
            if not v:
                return float("nan")
            c = model.graph[name].c_out
            n_les = c if lp.all_channels else max(1, int(round(frac * c)))
            scale = n_eval / les["images"]  # a pass's cost ∝ its images
            tot += v["build_s"] + scale * (v["prefix_s"] + n_les * (v["mask_pass_s"] + n_rep * v["replace_pass_s"]))
        return tot + n_eval / eval_load + n_eval / fwd[p]  # + loading the images and the intact model's pass

    add("lesion", f"{n_les_all} channels ({frac:g} of {sum(l.c_out for l in model.graph.layers)}) × {n_eval} images"
                  f" × (1 lesion + {n_rep} replacements), {lp.precision}",
        lesion_secs(lp.precision), ("per layer: split + prefix + passes as measured in part 2" if measured else
                                    f"not measured (part 2: {(les or {}).get('error', 'no layers')})")
        + ("" if len(measured) in (0, len(model.graph)) else
           f" ({len(measured)} layers measured, the others take their nearest measured layer's)"),
        lesion_secs("bf16"))

    # prune: methods × levels × seeds cells; one-shot evaluations (seed-free scores reuse the first seed's), then
    # finetune_epochs × finetune_batches × batch_size training images and a fine-tuned evaluation per cell
    pp = P["prune"]
    methods = list(pp.methods or sc.METHODS)
    n_l, n_s = len(pp.levels), len(pp.seeds)
    cells = len(methods) * n_l * n_s
    n_rand = int("random" in methods)
    oneshot = n_l * (len(methods) - n_rand + n_rand * n_s)
    n_pe = n_val if pp.eval_images is None else min(n_val, pp.eval_images)
    ft_batches = min(pp.finetune_batches, n_train // pp.batch_size if n_train >= pp.batch_size else 1)
    ft_imgs = pp.finetune_epochs * ft_batches * pp.batch_size
    ft_prec = prec.resolve(pp.finetune_precision, dev)
    ft_rate = num(fin, "finetune_median", ft_prec)
    evals = oneshot + (cells if pp.finetune_epochs else 0)
    taylor = pp.taylor_images / num(fin, "step_median", "finetune fp32") if "taylor" in methods else 0.0

    def prune_secs(p):
        return evals * n_pe / fwd[p] + cells * ft_imgs / ft_rate + taylor + n_pe / eval_load

    add("prune", f"{len(methods)} methods × {n_l} levels × {n_s} seeds = {cells} cells; {evals} evaluations × "
                 f"{n_pe} images ({pp.precision}); {cells} fine-tunes × {ft_imgs} images ({ft_prec})",
        prune_secs(pp.precision), f"evaluation at the plain forward {fwd[pp.precision]:.0f} img/s; finetune() end "
                                  f"to end {ft_rate:.0f} img/s", prune_secs("bf16"))
    add("report", "tables and figures", float("nan"), "not measured (seconds, CPU)")

    total = sum(r["seconds"] for r in rows if math.isfinite(r["seconds"]))
    total_alt = sum((r["seconds_bf16"] if r["seconds_bf16"] is not None and math.isfinite(r["seconds_bf16"])
                     else r["seconds"]) for r in rows if math.isfinite(r["seconds"]))
    b.say(f"{'stage':11s} {'projected':>10s} {'bf16 passes':>12s}  work  [basis]")
    for r in rows:
        alt = hms(r["seconds_bf16"]) if r["seconds_bf16"] is not None else ""
        b.say(f"{r['stage']:11s} {hms(r['seconds']):>10s} {alt:>12s}  {r['work']}")
        b.say(f"{'':36s}[{r['basis']}]")
    missing = [r["stage"] for r in rows if not math.isfinite(r["seconds"])]
    b.say(f"{'total':11s} {hms(total):>10s} {hms(total_alt):>12s}  the stages projected"
          + (f"; not included: {', '.join(missing)}" if missing else ""))
    b.say("Assumptions: ImageNet-100 = 126 689 train / 5 000 val images; per-image costs measured here on the "
          "generated 500×375 JPEGs with random weights (accuracy does not change the cost); loader and GPU overlap, "
          "so a training epoch runs at the slower of the two; a lesion pass costs the same for every channel of "
          "a layer, and a pass's cost is proportional to its images (all 5 000 in batches of 256); a pruned "
          "network (masks, zeroed weights) runs at the dense network's speed, and its evaluation at the plain "
          "forward's; the per-call costs (fx split per layer, model deepcopy per fine-tune, workers forked per "
          "stage) are counted as measured on the small counts, so they are over-weighted. 'bf16 passes': the same "
          "with --set capture.precision=bf16 --set lesion.precision=bf16 --set prune.precision=bf16.")
    out = {"rows": rows, "total_seconds": total, "total_seconds_bf16": total_alt, "not_included": missing,
           "counts": {"train_images": n_train, "val_images": n_val, "epochs": epochs, "train_batch": tbatch,
                      "checkpoints": n_ck, "lesioned_channels": n_les_all, "prune_cells": cells,
                      "prune_evaluations": evals, "prune_finetune_images_per_cell": ft_imgs}}
    b.res["projection"] = out
    b.save()
    return out


# ------------------------------------------------------------------------------------------------ main
def parse(argv=None):
    ap = argparse.ArgumentParser(description="GPU throughput of chanaxis on ConvNeXt-T at 224 px and the projected "
                                             "wall time of the paper preset (see the module docstring)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on test_convnext at 64 px (a smoke run)")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else bench/results)")
    ap.add_argument("--work", default=None, help="folder for the JPEG folder and stores (default: a temporary one)")
    ap.add_argument("--data", default=None, help="an existing ImageNet-100-format folder (default: generated)")
    ap.add_argument("--budget", type=float, default=None, help="seconds this script may take (default: 420; tiny 120)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--images", type=int, default=None, help="images per forward/capture measurement")
    ap.add_argument("--batch", type=int, default=None, help="capture's chunk_images and the forward batch")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the usable cores)")
    ap.add_argument("--lesion-images", type=int, default=None)
    ap.add_argument("--lesion-layers", type=int, default=None, help="layers timed (default: all)")
    ap.add_argument("--lesion-passes", type=int, default=None)
    ap.add_argument("--ft-batches", type=int, default=None)
    ap.add_argument("--ft-batch", type=int, default=None, help="fine-tune batch (default: the prune preset's)")
    ap.add_argument("--no-metrics", dest="metrics", action="store_false", help="skip the metrics stage")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args(argv)
    tiny = a.tiny
    defaults = dict(model="test_convnext" if tiny else "convnext_tiny", image_size=64 if tiny else 224,
                    images=16 if tiny else 1024, batch=8 if tiny else 128, repeats=1 if tiny else 3,
                    lesion_images=8 if tiny else 256, lesion_layers=2 if tiny else 0,
                    lesion_passes=1 if tiny else 3, workers=1 if tiny else None,
                    ft_batches=2 if tiny else 8, ft_batch=8 if tiny else None,
                    budget=120.0 if tiny else 420.0)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.per_class, a.classes, a.val_per_class = (6, 4, 4) if tiny else (11, 100, 3)
    a.train_batch = 8 if tiny else None  # None: the card's recipe batch (64)
    a.e2e_channels = 2 if tiny else 16
    a.write_mb = 16 if tiny else 1024
    a.reserve = 5.0 if tiny else 45.0  # seconds kept for the sections still to come
    a.metrics_timeout, a.metrics_min = (60.0, 5.0) if tiny else (240.0, 30.0)
    # tiny: the local and target metrics and the geometry pass (structure: k-means nulls, modularity: skipped)
    a.metrics_params = dict(only=("local", "target"), geometry_images=8) if tiny else {}
    return a


def main(argv=None) -> int:
    a = parse(argv)
    out = Path(a.out or os.environ.get("OUT") or (HERE / "results"))
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {a.device}: this python ({sys.executable}, torch {torch.__version__}) sees no CUDA device; "
              "use --device cpu --tiny for a smoke run", file=sys.stderr)
        return 2
    b = Bench(out, a.budget, a.device)
    # --work: the user's folder, never deleted (only the stores this script made in it are); else a temporary folder,
    # removed at the end unless --keep
    tmp = None if a.work or a.keep else tempfile.TemporaryDirectory(prefix="chanaxis-gpu-", ignore_cleanup_errors=True)
    work = Path(a.work) if a.work else Path(tmp.name) if tmp else Path(tempfile.mkdtemp(prefix="chanaxis-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        warnings.filterwarnings("ignore", message=".*synsets missing.*")
    from chanaxis.data.loader import usable_cores
    a.workers = usable_cores() if a.workers is None else a.workers
    try:
        import chanaxis
        from chanaxis import precision as prec
        from chanaxis.data import load_dataset
        from chanaxis.study import study_params
        dev = torch.device(a.device)
        # the JPEG folder first: its encoder processes fork before CUDA is initialised
        data = Path(a.data) if a.data else make_folder(work / "imagenet100", a.per_class, a.classes,
                                                        a.val_per_class, max(1, a.workers), b)
        if dev.type == "cuda":  # what the train stage sets for its deterministic cuBLAS (and keeps for the process)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        meta = {"python": sys.version.split()[0], "torch": torch.__version__, "device": a.device,
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                "cuda": torch.version.cuda, "cores": usable_cores(), "workers": a.workers, "tiny": a.tiny,
                "model": a.model, "image_size": a.image_size, "chanaxis": chanaxis.__version__,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        b.res["meta"] = meta
        b.say(f"chanaxis {meta['chanaxis']} · torch {meta['torch']} (CUDA {meta['cuda']}) · python {meta['python']} · "
              f"{meta['device_name']} · {meta['cores']} usable cores · TF32 matmul {meta['tf32_matmul']}, "
              f"cudnn {meta['tf32_cudnn']}, cudnn.benchmark {meta['cudnn_benchmark']} (torch's defaults, as chanaxis "
              f"runs)")
        P = study_params("paper")
        train_prec = prec.resolve(P["train"].precision, a.device)
        if a.train_batch is None:
            a.train_batch = int(P["train"].batch_size or chanaxis.data.get_card("imagenet100").recipe["batch_size"])
        t, model = b.timed(lambda: chanaxis.load_model(a.model, num_classes=100, image_size=a.image_size,
                                                       device=a.device))
        b.say(f"model {a.model}: {len(model.graph)} analysed layers, {sum(l.c_out for l in model.graph.layers)} "
              f"channels, random init (seed 0), built and traced in {t:.1f} s")
        ds = dict(root=str(data), image_size=a.image_size)
        cal = load_dataset("imagenet100", split="train", transform="eval", **ds)
        val = load_dataset("imagenet100", split="eval", transform="eval", **ds)
        tr = load_dataset("imagenet100", split="train", transform="train", **ds)
        cap = guarded(b, "capture", lambda: bench_capture(b, a, model, cal, work))
        les = guarded(b, "lesion", lambda: bench_lesion(b, a, model, val, P["lesion"]))
        fin = guarded(b, "finetune", lambda: bench_finetune(b, a, model, tr, P["prune"], train_prec))
        met = (guarded(b, "metrics", lambda: bench_metrics(b, a, cap.get("kept_store"), cap.get("images")))
               if a.metrics else {"skipped": "--no-metrics"})
        projection(b, a, model, cap, les, fin, met)
        failed = [k for k in ("capture", "lesion", "finetune") if "error" in b.res.get(k, {})]
        b.say("")
        b.say(f"done in {b.elapsed():.0f} s; results in {out / 'gpu.json'} and {out / 'gpu.txt'}"
              + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
        b.res["meta"]["seconds"] = b.elapsed()
        b.save()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 1 if failed else 0


def guarded(b: Bench, name: str, fn) -> dict:
    """A section, whose failure is printed and recorded while the sections after it still run."""
    import traceback
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one failed section must not cost the others on a one-shot GPU run
        tb = traceback.format_exc().strip().splitlines()
        b.say(f"section {name} FAILED: {type(e).__name__}: {e}")
        for line in tb[-8:]:
            b.say(f"    {line}")
        b.res[name] = {"error": f"{type(e).__name__}: {e}"}
        b.save()
        return b.res[name]


if __name__ == "__main__":
    sys.exit(main())
