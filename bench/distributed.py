"""The prune stage in-process vs on a local cluster of worker processes, the scheduler's per-task overhead, and the
projected wall time of the paper preset on ConvNeXt-T / ImageNet-100 on 1, 8 and 64 GPU workers (issue 14).

    .venv/bin/python bench/distributed.py [--workers 2] [--tiny] [--gpu-json PATH]
    .venv/bin/python bench/distributed.py --projection-only [--overhead-ms MS] [--gpu-json PATH]

1. Builds a store the way the quick study does (`test_resnet` on Fashion-MNIST at the data card's size, the quick
   preset's capture and metrics; `--tiny`: the `synthetic` dataset and a few prune cells, a smoke run of the
   script), then times the prune stage (quick preset; its units are the (method, level, seed) cells, each with its
   fine-tune) on two copies of it: in this process, then with `workers=N` (a `LocalCluster` of N worker processes
   made for the run, its start-up included: "cold"). Each local worker runs torch with this process's thread
   count ÷ N (`chanaxis.distributed.run_units`), so the fine-tuned results equal the in-process run only to float32
   rounding (weight gradients are summed in another order); the one-shot results must agree to 1e-10. Both
   largest differences are printed.
2. On a cluster started beforehand ("warm": workers up, chanaxis imported) the same prune stage again, timed, with
   dask's task stream: each unit's compute time on its worker (its workers run torch with this process's thread
   count ÷ N, as in the cold run: a cluster given as `scheduler` would otherwise get the driver's whole count). The scheduler's per-task overhead is the round trip
   of an empty task through the same client (submit → result), ÷ the mean compute time of a prune unit.
   Goals: speed-up ≥ 1.6× with 2 workers on 2 cores; per-task overhead < 5 % of a unit's time.
3. Projection of `chanaxis analyze convnext_tiny --dataset imagenet100 --preset paper` on W = 1, 8, 64 GPU workers.
   Every stage's units are counted from the real objects (`study_params("paper")`, the imagenet100 card's recipe,
   ConvNeXt-T's graph at 224 px with 100 classes, the stages' own unit definitions; see `paper_units`). Model: a
   stage's units go, in the order the stage lists them, each to the worker that is free first (dask hands a task
   to an idle worker), so the stage's wall time is that schedule's makespan (= ceil(units/W) × the unit time for
   equal units, and never below max(total/W, longest unit)), plus the measured per-task overhead × the tasks of the
   busiest worker. A unit's time ∝ its `work` (the stage's own weight: images of a capture chunk, lesioned
   channels × variants of a lesion block, 2 per prune cell: one-shot + fine-tune, 1 per metrics layer or geometry
   batch and per trajectory checkpoint). W = 1 and single-unit stages (train) run in-process, without the
   scheduler. Stages run one after another (their `needs`); prepare/finish (on the driver) are not modelled.
   With `--gpu-json` (the gpu.json that `bash bench/gpu.sh` writes: its "projection" rows, 1-GPU seconds per stage)
   the table is in hours; without it, wall time relative to 1 worker, and the stages are weighted for the total by
   a stated image-pass model (no GPU measurement behind it).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/ off the path: this file is named distributed.py and would shadow dask's `distributed` (here and in workers)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))

import numpy as np

import chanaxis

IMAGENET100_TRAIN = 126_689  # as bench/gpu.py: ImageNet-1k's training images of the 100 synsets
IMAGENET100_VAL = 5_000
GPU_WORKERS = (1, 8, 64)
TRAIN_STEP_PASSES = 3.0   # image-pass model (relative mode only): a training image = forward + backward ≈ 3 forwards
SUFFIX_SHARE = 0.5        # a lesion variant runs the network after its layer: about half of it on average


def _noop(i):
    return i


# ------------------------------------------------------------------------------------------------ comparison
def _pruning(path: Path):
    from chanaxis import store
    return store.open_run(path)["pruning"].to_dataset().load()


def _diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        both_nan = np.isnan(a) & np.isnan(b)
        d = np.where(both_nan, 0.0, d)
        return float(np.nanmax(np.where(np.isnan(d), np.inf, d), initial=0.0))
    return 0.0 if np.array_equal(a, b) else math.inf


def differences(p0: Path, p1: Path) -> dict[str, tuple[float, str]]:
    """{'oneshot': (largest difference, variable), 'finetuned': (…)} between two stores' /pruning: a variable with a
    `regime` dimension is split by regime; else it is fine-tuned when its name says so (`*finetune*`)."""
    x, y = _pruning(p0), _pruning(p1)
    out = {"oneshot": (0.0, ""), "finetuned": (0.0, "")}

    def add(kind, name, d):
        if d > out[kind][0]:
            out[kind] = (d, name)

    for k in x.data_vars:
        if "regime" in x[k].dims:
            for r in x[k].regime.values:
                add("finetuned" if "finetune" in str(r) else "oneshot", f"{k}[{r}]",
                    _diff(x[k].sel(regime=r).values, y[k].sel(regime=r).values))
        else:
            add("finetuned" if "finetune" in k else "oneshot", k, _diff(x[k].values, y[k].values))
    return out


def compare(a, work: Path) -> dict:
    """Parts 1 and 2: the measured figures (see the module docstring)."""
    from chanaxis.interventions.prune import PruneStage
    from chanaxis.stages.capture import CaptureStage
    from chanaxis.stages.metrics import MetricsStage

    dataset = "synthetic" if a.tiny else "fashion-mnist"
    size = {"num_classes": 10, "image_size": 32, "init_seed": 0}
    cap = CaptureStage.preset("quick").to_dict()
    met = MetricsStage.preset("quick").to_dict()
    pr = PruneStage.preset("quick").to_dict()
    if a.tiny:
        cap.update(n_calibration=48, chunk_images=16)
        met.update(n_null=1, n_perm=10, n_triplets=50, geometry_images=16)
        pr.update(methods=["input_capture", "random"], levels=[0.3], seeds=[1, 2], finetune_epochs=1,
                  finetune_batches=2, eval_images=48, batch_size=16, taylor_images=16, n_resamples=50)
    import torch
    print(f"{datetime.now():%Y-%m-%d %H:%M}; torch {torch.__version__}, {torch.get_num_threads()} threads in this "
          f"process; {a.workers} workers × {max(1, torch.get_num_threads() // a.workers)} torch threads each")
    base = work / "base.zarr"
    t = time.perf_counter()
    chanaxis.capture(chanaxis.load_model("test_resnet", **size), dataset, base, progress=False, **cap)
    chanaxis.metrics(base, progress=False, **met)
    print(f"store ready in {time.perf_counter() - t:.1f} s ({dataset})")
    runs = {}
    for label, kw in (("in-process", {}), (f"--workers {a.workers}", {"workers": a.workers})):
        path = work / f"{label.strip('-').replace(' ', '')}.zarr"
        shutil.copytree(base, path)
        t = time.perf_counter()
        chanaxis.prune(path, progress=False, **pr, **kw)
        runs[label] = (time.perf_counter() - t, path)
        print(f"prune {label}: {runs[label][0]:.1f} s"
              + (" (cold: cluster start, worker imports and model builds included)" if kw else ""))
    (t0, p0), (t1, p1) = runs.values()
    d = differences(p0, p1)
    print(f"speed-up (cold cluster) {t0 / t1:.2f}× (goal ≥ 1.6×)")
    print(f"largest difference in-process vs --workers {a.workers}: one-shot variables {d['oneshot'][0]:.1e} "
          f"({d['oneshot'][1] or 'all equal'}; must be ≤ 1e-10: {'ok' if d['oneshot'][0] <= 1e-10 else 'FAILED'}), fine-tuned "
          f"variables {d['finetuned'][0]:.1e} ({d['finetuned'][1] or 'all equal'}; float32 rounding: the workers sum the weight "
          f"gradients with {max(1, torch.get_num_threads() // a.workers)} thread(s), this process with "
          f"{torch.get_num_threads()})")

    # a warm cluster: the same stage on workers already started, with chanaxis imported; the task stream times units
    from distributed import Client, LocalCluster, as_completed, get_task_stream
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        p2 = work / "warm.zarr"
        shutil.copytree(base, p2)
        client.run(lambda: __import__("chanaxis.interventions.prune"))  # imports are not a unit's time
        # a cluster given as `scheduler` runs its workers with the driver's torch thread count; `--workers N`
        # gives each local worker the count ÷ N: set here for the call, so the workers run as in the cold run
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // a.workers))
        try:
            t = time.perf_counter()
            with get_task_stream(client) as ts:
                chanaxis.prune(p2, progress=False, scheduler=client, **pr)
            warm = time.perf_counter() - t
        finally:
            torch.set_num_threads(threads)
        unit_s = [sum(s["stop"] - s["start"] for s in rec["startstops"] if s["action"] == "compute")
                  for rec in ts.data if str(rec["key"]).startswith("prune-")]
        n = 200
        client.submit(_noop, -1).result()
        t = time.perf_counter()
        for f in as_completed([client.submit(_noop, i, pure=False) for i in range(n)]):
            f.result()
        batch = (time.perf_counter() - t) / n * a.workers   # n tasks shared by the workers
        t = time.perf_counter()
        for i in range(20):
            client.submit(_noop, i, pure=False).result()
        one = (time.perf_counter() - t) / 20
    dw = differences(p0, p2)
    mean_unit = float(np.mean(unit_s)) if unit_s else float("nan")
    print(f"warm cluster: prune {warm:.1f} s → speed-up {t0 / warm:.2f}× (goal ≥ 1.6×); largest differences to "
          f"in-process: one-shot {dw['oneshot'][0]:.1e}, fine-tuned {dw['finetuned'][0]:.1e}")
    print(f"units: {len(unit_s)}, mean compute {mean_unit:.2f} s on a worker (min {min(unit_s, default=0):.2f}, max "
          f"{max(unit_s, default=0):.2f}; a worker's first unit builds the model); sum {sum(unit_s):.1f} s; "
          f"in-process stage {t0:.1f} s")
    print(f"empty-task round trip {one * 1e3:.1f} ms alone, {batch * 1e3:.1f} ms per worker in a batch of {n} → "
          f"overhead {one / mean_unit * 100:.2f} % of a unit (goal < 5 %)")
    return {"overhead_s": one, "in_process_s": t0, "cold_s": t1, "warm_s": warm, "mean_unit_s": mean_unit}


# ------------------------------------------------------------------------------------------------ projection
def paper_units() -> tuple[dict[str, list[float]], dict[str, str], dict[str, float]]:
    """The paper preset on ConvNeXt-T / ImageNet-100, counted from the real objects: (stage → the `work` of each of
    its units, in the order the stage lists them; stage → what they are; stage → image passes on the GPU, the
    weight of the stage in the relative total)."""
    import torch

    from chanaxis.data import get_card
    from chanaxis.interventions import scores as sc
    from chanaxis.interventions.lesion import (
        REPLACE_KINDS,
        block_size,
        lesion_blocks,
        select_channels,
    )
    from chanaxis.stages.metrics import GEOMETRY_UNIT_IMAGES
    from chanaxis.study import study_params
    from chanaxis.training import parse_schedule, resolve_recipe

    P = study_params("paper")
    card = get_card("imagenet100")
    tp = P["train"]
    r = resolve_recipe(card, "convnext_tiny", dict(tp.recipe or ()), tp.epochs, tp.batch_size)
    epochs = int(r["epochs"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a graph, not a benchmark
    try:
        graph = chanaxis.load_model("convnext_tiny", num_classes=card.num_classes, image_size=card.image_size).graph
    finally:
        torch.set_num_threads(threads)
    n_train, n_val = IMAGENET100_TRAIN, IMAGENET100_VAL
    units, what, passes = {}, {}, {}

    # train: one unit (work = epochs), serial
    n_tr = min(n_train, tp.train_subset or n_train)
    n_ev = min(n_val, tp.eval_subset or n_val)
    units["train"] = [float(epochs)]
    what["train"] = f"1 unit ({epochs} epochs × {n_tr} images)"
    passes["train"] = epochs * n_tr * TRAIN_STEP_PASSES + (epochs + 1) * n_ev

    # capture: chunks of chunk_images calibration images (the train split)
    cp = P["capture"]
    n_cal = min(cp.n_calibration, n_train)
    c = cp.chunk_images
    units["capture"] = [float(min(n_cal, (k + 1) * c) - k * c) for k in range(-(-n_cal // c))]
    what["capture"] = f"{len(units['capture'])} chunks of ≤ {c} of {n_cal} images"
    passes["capture"] = n_cal

    # metrics: one unit per layer + the gradient-geometry batches
    mp = P["metrics"]
    n_geo = min(n_cal, mp.geometry_images) if "structure" in mp.only else 0
    n_gb = -(-n_geo // GEOMETRY_UNIT_IMAGES)
    units["metrics"] = [1.0] * (len(graph) + n_gb)
    what["metrics"] = f"{len(graph)} layers + {n_gb} geometry batches of {GEOMETRY_UNIT_IMAGES} images"
    passes["metrics"] = n_geo * TRAIN_STEP_PASSES  # the layer units are CPU reductions: no image passes

    # trajectory: one unit per checkpoint of the default schedule
    trp = P["trajectory"]
    n_ck = len(parse_schedule(tp.checkpoints, epochs))
    n_tcal = min(trp.n_calibration, n_train)
    units["trajectory"] = [1.0] * n_ck
    what["trajectory"] = f"{n_ck} checkpoints"
    passes["trajectory"] = n_ck * (n_tcal + (min(n_tcal, trp.geometry_images) * TRAIN_STEP_PASSES
                                            if trp.grad_cos else 0))

    # lesion: (layer, block of unit_channels lesioned channels), work = channels × (1 lesion + replacements)
    lp = P["lesion"]
    layer = np.concatenate([[name] * graph[name].c_out for name in graph.names])  # /metrics rows, in order
    chans = select_channels(layer, lp.fraction, lp.all_channels, lp.seed)
    n_les_img = n_val if lp.eval_images is None else min(n_val, lp.eval_images)
    per = 1 + (len(REPLACE_KINDS) if lp.replace else 0)
    blocks = lesion_blocks(chans, block_size(lp.unit_channels, n_les_img, lp.batch_size))
    units["lesion"] = [float((hi - lo) * per) for _, _, lo, hi in blocks]
    n_les = sum(len(v) for v in chans.values())
    what["lesion"] = (f"{len(blocks)} blocks of ≤ {block_size(lp.unit_channels, n_les_img, lp.batch_size)} of "
                      f"{n_les} channels × {per} variants")
    passes["lesion"] = n_les * per * n_les_img * SUFFIX_SHARE

    # prune: (method, seed, level) cells, work 2 each with a fine-tune (one-shot + fine-tune)
    pp = P["prune"]
    methods = list(pp.methods or sc.METHODS)
    cells = len(methods) * len(pp.seeds) * len(pp.levels)
    units["prune"] = [float(1 + int(pp.finetune_epochs > 0))] * cells
    n_pe = n_val if pp.eval_images is None else min(n_val, pp.eval_images)
    ft_imgs = pp.finetune_epochs * min(pp.finetune_batches, max(1, n_train // pp.batch_size)) * pp.batch_size
    what["prune"] = (f"{cells} cells ({len(methods)} methods × {len(pp.levels)} levels × {len(pp.seeds)} seeds)")
    passes["prune"] = cells * (2 * n_pe + ft_imgs * TRAIN_STEP_PASSES)
    return units, what, passes


def makespan(times: list[float], w: int) -> tuple[float, int]:
    """(wall time, tasks on the busiest worker) of `times` handed in order, each to the first free of `w` workers."""
    import heapq
    free = [(0.0, 0, i) for i in range(w)]  # (free at, tasks run, worker)
    for t in times:
        at, k, i = heapq.heappop(free)
        heapq.heappush(free, (at + t, k + 1, i))
    return max(f[0] for f in free), max(f[1] for f in free)


def gpu_seconds(path: str | None) -> dict[str, float]:
    """stage → 1-GPU seconds from a gpu.json (bench/gpu.py `Bench.save`: res["projection"]["rows"]); NaN rows out."""
    if not path:
        return {}
    res = json.loads(Path(path).read_text())
    rows = (res.get("projection") or {}).get("rows") or []
    return {r["stage"]: float(r["seconds"]) for r in rows
            if r.get("seconds") is not None and math.isfinite(float(r["seconds"]))}


def hms(s: float) -> str:
    if not math.isfinite(s):
        return "—"
    return f"{s:.0f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def projection(overhead_s: float | None, gpu_json: str | None, source: str = "measured above: an empty task's round "
               "trip") -> None:
    units, what, passes = paper_units()
    secs = gpu_seconds(gpu_json)
    ov = overhead_s or 0.0
    absolute = bool(secs)
    print()
    print("== projection: chanaxis analyze convnext_tiny --dataset imagenet100 --preset paper, on W GPU workers")
    print(f"per-task scheduler overhead: {ov * 1e3:.1f} ms ({source if overhead_s is not None else 'not given'})")
    if absolute:
        print(f"1-GPU seconds per stage from {gpu_json} (bench/gpu.py's projection rows)")
    else:
        print("no --gpu-json: wall time relative to 1 worker. Absolute hours need a GPU run (`bash bench/gpu.sh`, "
              "see bench/README.md), then `--gpu-json results/gpu.json`.")
    head = f"{'stage':11s} {'units':>5s}  " + "  ".join(
        f"{'W=' + str(w):>{22 if not absolute else 18}s}" for w in GPU_WORKERS) + "  units"
    print(head)
    total = {w: 0.0 for w in GPU_WORKERS}
    over = {w: 0.0 for w in GPU_WORKERS}
    weight = 0.0
    left_out = []
    for s, work in units.items():
        tot = sum(work)
        cells = []
        for w in GPU_WORKERS:
            serial = w == 1 or len(work) == 1   # in-process: no cluster for one worker or one unit
            span, k = (tot, 0) if serial else makespan(work, w)
            o = 0.0 if serial else k * ov
            if absolute:
                if s in secs:
                    wall = secs[s] * span / tot + o
                    total[w] += wall
                    cells.append(f"{hms(wall):>9s} ({secs[s] / wall if wall else 1:4.1f}×)")
                else:
                    cells.append(f"{'not measured':>18s}")
            else:
                rel = span / tot
                total[w] += passes[s] * rel
                over[w] += o
                cells.append(f"{rel:6.3f} {1 / rel:5.1f}× {100 / rel / w:4.0f} %")
        if absolute and s not in secs:
            left_out.append(s)
        weight += passes[s] if s in secs or not absolute else 0.0
        print(f"{s:11s} {len(work):5d}  " + "  ".join(cells) + f"  {what[s]}")
    if absolute:
        t1 = total[1]
        print(f"{'total':11s} {'':5s}  " + "  ".join(f"{hms(total[w]):>9s} ({t1 / total[w]:4.1f}×)"
                                                     for w in GPU_WORKERS)
              + (f"  not included: {', '.join(left_out)}" if left_out else ""))
    else:
        print(f"{'total':11s} {'':5s}  " + "  ".join(
            f"{total[w] / weight:6.3f} {weight / total[w]:5.1f}× {100 * weight / total[w] / w:4.0f} %"
            for w in GPU_WORKERS) + "  stages weighted by image passes (below)")
        print(f"{'overhead':11s} {'':5s}  " + "  ".join(f"{f'+ {over[w]:.2f} s':>22s}" for w in GPU_WORKERS)
              + "  absolute: tasks of the busiest worker × the per-task overhead, all stages")
        print("columns: wall ÷ 1-worker wall, speed-up, efficiency (speed-up ÷ W)")
        print("image-pass weights of the total (an assumption, not a measurement; a training image = "
              f"{TRAIN_STEP_PASSES:g} forwards, a lesion variant = {SUFFIX_SHARE:g} of a forward, the metrics' layer "
              "units = 0): " + ", ".join(f"{s} {100 * v / weight:.1f} %" for s, v in passes.items()))
    print("Model: each stage's units, in the order the stage lists them, go each to the first free worker (dask gives "
          "a task to an idle worker); a unit's time ∝ its `work` (the stage's weight: images per capture chunk, "
          "lesioned channels × variants per lesion block, 2 per prune cell, 1 per metrics layer / geometry batch / "
          "checkpoint), so equal units give ceil(units/W) × the mean unit time; + the per-task overhead × the tasks "
          "of the busiest worker. W = 1 and one-unit stages (train) run in-process. Stages run one after another "
          "(their `needs`); prepare/finish on the driver (prune's taylor scores and bootstrap, the lesion tables, "
          "the metrics' structure analyses) are not modelled, nor the report; every worker has its own GPU, the "
          "data and the store are reachable at the same speed from every worker.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: synthetic data, four prune cells")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--gpu-json", default=None, help="gpu.json of a GPU run (bash bench/gpu.sh): hours per stage")
    ap.add_argument("--projection-only", action="store_true", help="only part 3 (no benchmark runs)")
    ap.add_argument("--overhead-ms", type=float, default=None, help="with --projection-only: the per-task overhead")
    a = ap.parse_args(argv)
    if a.projection_only:
        projection(None if a.overhead_ms is None else a.overhead_ms / 1e3, a.gpu_json, "--overhead-ms")
        return
    # --keep: a folder of its own, left in place (printed); else a temporary one, removed at the end
    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="chanaxis-bench-dist-", ignore_cleanup_errors=True)
    work = Path(tmp.name) if tmp else Path(tempfile.mkdtemp(prefix="chanaxis-bench-dist-"))
    try:
        res = compare(a, work)
    finally:
        if tmp is None:
            print(f"kept {work}")
        else:
            tmp.cleanup()
    projection(res["overhead_s"], a.gpu_json)


if __name__ == "__main__":
    main()
