"""Interventions at the machine's speed: lesion suffix passes and fine-tuning steps in MACs/s, each ÷ the same
model's plain forward / plain training step in MACs/s, measured alternating in this one run (issue 13).

    .venv/bin/python bench/interventions.py [--models resnet18,mobilenetv2_100] [--layers 4] [--images 8] [--repeats 3]

Lesion side: `chanaxis.interventions.lesion.layer_damages` (suffix path), the lesion stage's shape: a seeded
`--fraction` of each layer's channels as `chanaxis lesion` draws them (quick preset: 0.2), each lesioned and (unless
`--no-replace`) replaced from 4 peer sets, `--batch-size` rows per pass (the stage's 256), over `--layers` layers spread
evenly through the network (0: all). Work = Σ over layers of suffix MACs × images × variants, suffix MACs = the MACs
(the one formula, `chanaxis.model.macs`, via `graph.flow`) of every conv/linear module that runs after the lesioned
layer, classifier included. The prefix — run once per layer and image batch — is not counted: it is overhead (the
script prints its bound; it matters only where a layer has few variants). Plain side: `module(x)` in eval/no_grad on
the same number of rows, run after each layer for about the MACs that layer's suffixes did (alternating layer by
layer), full forward MACs × rows ÷ s.

Fine-tune side: `chanaxis.interventions.finetune.finetune` (1 epoch, `--steps` batches of `--ft-batch` Fashion-MNIST
training images through a `Loader`, a magnitude plan at `--level` channel sparsity), work = 3 × *full* forward MACs ×
images (the masked network computes every MAC of the unpruned one: zeros are multiplied too), so the deepcopy, the
loader and re-zeroing the pruned entries after every step (`PrunedZeros`) count as overhead. Plain side: forward + cross-entropy + backward + Adam step of a copy of the
unpruned module on the same batches held in memory (no loading), 3 × forward MACs × images ÷ s.

Roofline: the plain pass of the same model at the same batch on the same threads — what torch's CPU kernels reach here;
the goal is ratio ≥ 0.8 for both.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

# bench/lesion.py, beside this script (its folder is on sys.path when it runs as one)
from lesion import randomise_bn

import chanaxis
from chanaxis.data.loader import Loader, item_seeds
from chanaxis.estimators.stats import Moments
from chanaxis.interventions import scores as sc
from chanaxis.interventions.finetune import finetune
from chanaxis.interventions.lesion import layer_damages, select_channels
from chanaxis.interventions.masks import PruningPlan


def suffix_macs(model, layer: str) -> int:
    """MACs per image of every conv/linear module that runs after `layer` (execution order of the traced flow)."""
    flow = model.graph.flow
    order = [n for n in flow.order if n in flow.info]
    return sum(flow.info[n].macs for n in order[order.index(layer) + 1:])


def fake_moments(c: int, seed: int) -> Moments:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((4 * c, c))
    cov = a.T @ a / (4 * c)
    return Moments(n=4 * c, mean_y=rng.standard_normal(c), cov_yy=cov, mean_t=0.0, var_t=1.0, cov_yt=np.zeros(c))


class Clock:
    """Wall seconds, and CPU seconds of this process (all its threads), summed over `with clock:` blocks. The CPU
    figure is the noise check: other jobs on a shared machine stretch the wall time, much less the CPU time."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def plain_forward(module, x, passes: int) -> None:
    module.eval()
    with torch.no_grad():
        for _ in range(passes):
            module(x)


def plain_train(net, opt, batches) -> None:
    net.train()
    for xb, yb in batches:
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def report(what: str, plain: str, work_side: float, work_plain: float, runs: list[tuple[Clock, Clock]]) -> float:
    """Prints both MAC rates per run (wall) and the ratios (wall; CPU time in brackets); returns the median ratio."""
    def line(label, rates):
        print(f"  {label:18s} {statistics.median(rates) / 1e9:7.1f} GMAC/s  (runs "
              f"{', '.join(f'{r / 1e9:.1f}' for r in rates)})")
    line(plain, [work_plain / p.wall for p, _ in runs])
    line(what, [work_side / s.wall for _, s in runs])
    wall = [(work_side / s.wall) / (work_plain / p.wall) for p, s in runs]
    cpu = [(work_side / s.cpu) / (work_plain / p.cpu) for p, s in runs]
    print(f"  {what.split()[0].upper()} RATIO {statistics.median(wall):.2f} (runs {', '.join(f'{r:.2f}' for r in wall)}; "
          f"by CPU seconds {statistics.median(cpu):.2f}: {', '.join(f'{r:.2f}' for r in cpu)})")
    return statistics.median(wall)


def bench_lesion(model, a, x, y):
    g = model.graph
    # the study's own draw (`chanaxis lesion --fraction`): a seeded share of every layer's channels, ≥ 1 each
    chans = select_channels(np.repeat(g.names, [g[n].c_out for n in g.names]), a.fraction, False, 0)
    if a.layers:
        keep = {g.names[int(i)] for i in np.linspace(0, len(g) - 1, a.layers).round()}
        chans = {l: c for l, c in chans.items() if l in keep}
    kinds = ("replaced_damage", "replaced_damage_top8", "mean_ablation_damage", "random_peer_damage") if a.replace else ()
    per = 1 + len(kinds)
    full = g.total_macs
    work = {l: suffix_macs(model, l) * len(c) * per * len(x) for l, c in chans.items()}
    prefix = sum((full - suffix_macs(model, l)) * len(x) for l in chans)  # upper bound: non-conv ops aside
    nb = min(len(x), a.batch_size)
    rows = nb * max(1, a.batch_size // nb)
    # the plain side runs after each layer about the MACs that layer's suffixes did (≥ 1 pass)
    passes = {l: max(1, round(w / (full * rows))) for l, w in work.items()}
    xp = x[:nb].repeat(max(1, a.batch_size // nb), 1, 1, 1)[:rows].contiguous()
    with torch.no_grad():
        logits = model.module.eval()(x)
        base = (float(F.cross_entropy(logits, y)), 100.0 * float((logits.argmax(1) == y).float().mean()))
    extra = {}
    for i, (l, c) in enumerate(chans.items()):
        if kinds:  # peer sets of 6 and ridge fits on made-up moments: the cost, not the values, matters here
            rng = np.random.default_rng(i)
            sets = {k: [rng.choice(g[l].c_out, min(6, g[l].c_out - 1), replace=False) for _ in c] for k in kinds}
            sets["mean_ablation_damage"] = [[]] * len(c)
            extra[l] = (fake_moments(g[l].c_out, i), sets)
    total = sum(work.values())
    print(f"  lesion: {len(chans)} layers, {sum(map(len, chans.values()))} channels × {per} variants (lesion"
          f"{' + 4 peer replacements' if kinds else ''}), {len(x)} images, batch {a.batch_size} (rows per pass {rows})")
    print(f"          (layer: channels, suffix share of the forward MACs) "
          f"{', '.join(f'{l}: {len(c)}, {suffix_macs(model, l) / full:.0%}' for l, c in chans.items())}")
    print(f"          counted work {total / 1e9:.1f} GMAC of suffixes; not counted: the prefixes, ≤ {prefix / 1e9:.1f} "
          f"GMAC (= {prefix / total:.1%} of it); plain side {sum(passes.values())} passes of {rows} rows")

    def one(l, c, clock):
        mom, ps = extra.get(l, (None, None))
        with clock:
            _, mode = layer_damages(model, l, x, y, c, base, mom, ps, a.batch_size, True)
        assert mode == "suffix", mode

    if a.profile == "lesion":
        _profile(lambda: [one(l, c, Clock()) for l, c in chans.items()])
    first = next(iter(chans))
    one(first, chans[first][:1], Clock())  # warm: the fx trace (once per module), the allocator
    plain_forward(model.module, xp, 1)
    runs = []
    for _ in range(a.repeats):
        cp, cl = Clock(), Clock()
        for l, c in chans.items():  # alternate layer by layer: load changes hit both sides alike
            one(l, c, cl)
            with cp:
                plain_forward(model.module, xp, passes[l])
        runs.append((cp, cl))
    return report("lesion suffixes", "plain forward", total, full * rows * sum(passes.values()), runs)


def bench_finetune(model, a):
    g = model.graph
    plan = PruningPlan(model)
    scores = {n: np.abs(g.filters(n)).reshape(g[n].c_out, -1).sum(1) for n in plan.prunable}
    eff = plan.effective(sc.allocate(scores, a.level, "global"))
    h = chanaxis.load_dataset("fashion-mnist", split="train")
    loader = Loader(h.dataset, workers=a.workers)
    n_img = a.steps * a.ft_batch
    full = g.total_macs
    work = 3 * full * n_img
    # the plain side's batches: the very items (and augmentation seeds) finetune(seed=0) draws, held in memory
    order = np.random.default_rng(0).permutation(len(h.dataset))[:n_img]
    held = list(loader.batches(order, a.ft_batch, seeds=item_seeds(0, 0, n_img)))
    print(f"  finetune: {a.steps} steps × {a.ft_batch} images, magnitude plan at {a.level:.0%} channel sparsity "
          f"(pruned network {plan.macs(eff) / full:.0%} of the MACs; counted: full {full / 1e6:.1f} MMAC/image × 3), "
          f"loader workers {a.workers}")
    net = copy.deepcopy(model.module)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def run_ft(clock):
        with clock:
            finetune(model, eff, loader, 1, a.steps, 1e-4, 0, a.ft_batch)

    if a.profile == "finetune":
        _profile(lambda: run_ft(Clock()))
    load = Clock()
    with load:
        for _ in loader.batches(order, a.ft_batch, seeds=item_seeds(0, 0, n_img)):
            pass
    print(f"  loading alone      {n_img / load.wall:7.0f} images/s ({load.wall:.2f} s for the {n_img} images)")
    plain_train(net, opt, held[:1])  # warm
    run_ft(Clock())
    runs = []
    for _ in range(a.repeats):
        cp, cf = Clock(), Clock()
        with cp:
            plain_train(net, opt, held)
        run_ft(cf)
        runs.append((cp, cf))
    loader.close()
    return report("finetune steps", "plain train step", work, work, runs)


def _profile(fn):
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18", help="comma-separated timm names (32 px, 10 classes)")
    ap.add_argument("--images", type=int, default=8, help="lesion: evaluation images")
    ap.add_argument("--batch-size", type=int, default=256, help="lesion: images × variants per pass (the stage's)")
    ap.add_argument("--fraction", type=float, default=0.2, help="lesion: share of each layer's channels, ≥ 1 (quick: 0.2)")
    ap.add_argument("--layers", type=int, default=4, help="lesion: only this many layers, spread evenly (0: all)")
    ap.add_argument("--replace", action=argparse.BooleanOptionalAction, default=True,
                    help="lesion: also the 4 peer-replacement variants per channel (the stage's default)")
    ap.add_argument("--steps", type=int, default=3, help="fine-tune: steps (batches) per timed run")
    ap.add_argument("--ft-batch", type=int, default=128, help="fine-tune: images per step (the stage's)")
    ap.add_argument("--level", type=float, default=0.35, help="fine-tune: channel sparsity of the plan")
    ap.add_argument("--workers", type=int, default=0, help="fine-tune: loader worker processes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("lesion", "finetune"), default=None)
    ap.add_argument("--profile", choices=("lesion", "finetune"), default=None, help="cProfile one untimed run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h = chanaxis.load_dataset("fashion-mnist", split="test")
    idx = np.random.default_rng(0).choice(len(h.dataset), a.images, replace=False)
    x, y = Loader(h.dataset, workers=0).images(np.sort(idx))
    print(f"torch {torch.__version__}, {a.threads} threads, {a.repeats} alternating repeats (median shown); "
          f"MAC rates = MACs ÷ wall seconds; roofline = the plain pass, same model, batch and threads")
    out = {}
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = chanaxis.load_model(name, num_classes=10, image_size=32)
        randomise_bn(model.module)
        print(f"{name} (32 px, random init, {model.graph.total_macs / 1e6:.1f} MMAC/image)")
        if a.only in (None, "lesion"):
            out[(name, "lesion")] = bench_lesion(model, a, x, y)
        if a.only in (None, "finetune"):
            out[(name, "finetune")] = bench_finetune(model, a)
    print("summary (goal ≥ 0.8): " + ", ".join(f"{m} {k} {r:.2f}" for (m, k), r in out.items()))


if __name__ == "__main__":
    main()
