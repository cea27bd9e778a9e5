"""The prune stage in-process vs on a local cluster of worker processes, and the scheduler's per-task overhead.

    .venv/bin/python bench/distributed.py [--workers 2] [--tiny]

Builds a store the way the quick study does (`test_resnet` on Fashion-MNIST at the data card's size, the quick
preset's capture and metrics; `--tiny`: the `synthetic` dataset and a few prune cells, a smoke run of the script),
then times the prune stage (quick preset; its units are the (method, level, seed) cells, each with its fine-tune)
on two copies of it: in this process, then with `workers=N` (a `LocalCluster` of N single-threaded worker processes
made for the run, its start-up included in the time). The two stores' accuracies must agree to 1e-10.

Goals (issue 14): speed-up ≥ 1.6× with 2 workers on 2 cores; the scheduler's per-task overhead < 5 % of a unit's
time. The overhead is measured as the round trip of an empty task through the same client (submit → as_completed),
÷ the mean compute time of a prune unit on the workers (dask's task stream: each task's compute start→stop).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import chanaxis


def _noop(i):
    return i


def _arrays(path: Path) -> dict:
    g = zarr.open_group(str(path / "pruning"), mode="r")
    return {k: np.asarray(a[...]) for k, a in g.arrays()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: synthetic data, four prune cells")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args(argv)
    from chanaxis.interventions.prune import PruneStage
    from chanaxis.safety import remove_store
    from chanaxis.stages.capture import CaptureStage
    from chanaxis.stages.metrics import MetricsStage

    # --keep: a folder of its own, left in place (printed); else a temporary one, removed at the end
    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="chanaxis-bench-dist-", ignore_cleanup_errors=True)
    work = Path(tmp.name) if tmp else Path(tempfile.mkdtemp(prefix="chanaxis-bench-dist-"))
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
    try:
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
                  + (" (cluster start, worker imports and model builds included)" if kw else ""))
        (t0, p0), (t1, p1) = runs.values()
        x, y = _arrays(p0), _arrays(p1)
        worst = max(float(np.nanmax(np.abs(x[k] - y[k]), initial=0.0)) if x[k].dtype.kind == "f" else
                    float(not np.array_equal(x[k], y[k])) for k in x)
        print(f"speed-up {t0 / t1:.2f}× (goal ≥ 1.6×); largest difference between the stores {worst:.1e} "
              f"(must be ≤ 1e-10)")

        # per-task overhead: an empty task's round trip ÷ a prune unit's compute time on a worker
        from distributed import Client, LocalCluster, as_completed, get_task_stream
        with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            remove_store(p1)  # proves it is the chanaxis store pruned above, holding only its own files
            shutil.copytree(base, p1)
            client.run(lambda: __import__("chanaxis.interventions.prune"))  # imports are not a unit's time
            t = time.perf_counter()
            with get_task_stream(client) as ts:
                chanaxis.prune(p1, progress=False, scheduler=client, **pr)
            warm = time.perf_counter() - t
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
        mean_unit = float(np.mean(unit_s)) if unit_s else float("nan")
        print(f"on a warm cluster: prune {warm:.1f} s; units: {len(unit_s)}, mean compute {mean_unit:.2f} s on a "
              f"worker (first unit per worker builds the model); empty-task round trip "
              f"{one * 1e3:.1f} ms alone, {batch * 1e3:.1f} ms per worker in a batch → overhead "
              f"{one / mean_unit * 100:.2f} % of a unit (goal < 5 %)")
    finally:
        if tmp is None:
            print(f"kept {work}")
        else:
            tmp.cleanup()


if __name__ == "__main__":
    main()
