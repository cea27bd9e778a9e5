"""Loader throughput on a 224 px ImageNet-format JPEG folder with 0, 1, 2… worker processes, and the ratio of the
most workers to one. Run: .venv/bin/python bench/loader.py [--dir DIR] [--images 384] [--repeats 3]

Goal (issue 13): 2 workers ≥ 1.7× one worker on 2 cores. The folder is `bench/jpeg_folder.py`'s (500×375 q90 JPEGs,
ImageNet-100's layout), made under --dir when absent; every image is read once before timing, so the files come
from the page cache (what is measured is decode + resize + crop + normalise + collate, not the disk). One persistent
`chanaxis.data.loader.Loader` per worker count, each warmed up (workers started) before the first timed pass; then
`--repeats` rounds, each timing one `.batches(indices, batch)` pass per worker count, in an order rotated every round.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its reaped children and its live descendants (Linux /proc): the
    loader's worker processes included. Δcpu ÷ Δwall = the cores this benchmark actually got."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(fields[1]), sum(int(v) for v in fields[11:13]), sum(int(v) for v in fields[13:15]))
    me = os.getpid()
    total, todo, seen = stats.get(me, (0, 0, 0))[1] + stats.get(me, (0, 0, 0))[2], [me], {me}
    while todo:
        parent = todo.pop()
        for pid, (ppid, own, _) in stats.items():
            if ppid == parent and pid not in seen:
                seen.add(pid)
                todo.append(pid)
                total += own
    return total / tick


def cpu_share_note() -> str:
    """How contended the CPUs are: with the kernel's autogroup scheduling (one group per session), every busy session
    gets an equal share of the cores however many processes it starts, so extra workers only help on a quiet machine."""
    note = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() == "1":
                note += ", autogroup scheduling on"
    except OSError:
        pass
    return note


def loader_speed(loader, idx, batch: int) -> tuple[float, float]:
    """(images/s, cores used) of one pass."""
    t, c = time.perf_counter(), cpu_seconds()
    n = 0
    for x, _ in loader.batches(idx, batch):
        n += len(x)
    assert n == len(idx)
    wall = time.perf_counter() - t
    return n / wall, (cpu_seconds() - c) / wall


def jpeg_handle(root: str | Path, images: int):
    """The `imagenet100` training split of a generated folder under `root` holding at least `images` images."""
    from jpeg_folder import make

    import chanaxis
    make(root, per_class=max(1, -(-images // 100)), classes=100, val_per_class=1)
    return chanaxis.load_dataset("imagenet100", root=str(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/chanaxis_bench_jpeg", help="the JPEG folder (made when absent)")
    ap.add_argument("--images", type=int, default=384, help="images per timed pass (default 384)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2", help="worker counts, comma-separated (default 0,1,2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the main process (default 2)")
    a = ap.parse_args()
    from chanaxis.data.loader import Loader
    torch.set_num_threads(a.threads)
    handle = jpeg_handle(a.dir, a.images)
    idx = list(range(a.images))
    counts = [int(w) for w in a.workers.split(",")]
    loaders = {w: Loader(handle.dataset, workers=w) for w in counts}
    for w in counts:  # start the workers, fill the page cache
        loader_speed(loaders[w], idx if w == counts[0] else idx[:2 * a.batch], a.batch)
    print(f"loader images/s, {a.images} {handle.image_size} px JPEGs from {a.dir} (500×375 q90, page cache warm), "
          f"batch {a.batch}, main process {torch.get_num_threads()} torch threads, workers 1 thread each; "
          f"{cpu_share_note()}")
    runs: dict[int, list[float]] = {w: [] for w in counts}
    cores: dict[int, list[float]] = {w: [] for w in counts}
    for r in range(a.repeats):
        order = counts[r % len(counts):] + counts[:r % len(counts)]
        for w in order:
            speed, used = loader_speed(loaders[w], idx, a.batch)
            runs[w].append(speed)
            cores[w].append(used)
        print(f"  round {r + 1}: " + ", ".join(f"{w} workers {runs[w][-1]:.1f} img/s ({cores[w][-1]:.2f} cores)"
                                              for w in counts), flush=True)
    med = statistics.median
    for w in counts:
        print(f"  {w} workers: {med(runs[w]):7.1f} img/s (runs {', '.join(f'{s:.1f}' for s in runs[w])}); "
              f"cores used {med(cores[w]):.2f}, {med(r / c for r, c in zip(runs[w], cores[w])):.1f} img per CPU-s")
    if 1 in runs and max(counts) > 1:
        top = max(counts)
        ratios = [b / o for b, o in zip(runs[top], runs[1])]
        print(f"  {top} workers ÷ 1 worker: {med(ratios):.2f} (runs {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"goal ≥ 1.7 for 2 workers on 2 cores)")
        eff = [(bt / bc) / (ot / oc) for bt, bc, ot, oc in zip(runs[top], cores[top], runs[1], cores[1])]
        print(f"  images per CPU-second, {top} workers ÷ 1 worker: {med(eff):.2f} (runs "
              f"{', '.join(f'{r:.2f}' for r in eff)}); with {top} free cores the ratio above would be "
              f"{min(top, os.cpu_count() or 1)} × this = {min(top, os.cpu_count() or 1) * med(eff):.2f} "
              "(a projection, not a measurement: it holds when nothing else wants the cores)")
    for lo in loaders.values():
        lo.close()


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
