"""Duration estimates for a study, extrapolated from real batches of its dataset through the real loader.

`measure` loads a few batches of the study's own images through a `chanaxis.data.loader.Loader` with the study's
worker count and times, each alone and after a warm-up: the loader (decode + transform, evaluation and training
pipelines), the eval forward on those images, one training step on an augmented training batch, and a float64
matmul (the covariances of the metrics). `estimate_stages` combines these per stage into `Row`s whose seconds are
attributed to the term on the stage's critical path, so each row — and the whole study — names what bounds it.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from .data.loader import Loader, item_seeds, usable_cores

# the terms a stage's time is made of (what `Row.bound` and `Estimate.dominant` name)
LOADER = "loader (decode)"
FORWARD = "forward"
STEP = "training step"
COV = "covariances (float64 matmul)"
PER_LAYER = "hulls and clustering (per layer)"
REPORT = "tables and figures"
WRITE = "store writes"

BATCH_SECONDS = 0.5  # target duration of one timed batch: the whole measurement takes a few seconds on a CPU
PROBE = 4            # images of the warm-up load that size the batches
MIN_BATCH = 16       # smallest timed batch, whatever the budget (unless the stage's own batch is smaller)


@dataclasses.dataclass(frozen=True)
class Rates:
    """Seconds per image measured on real images: the loader alone (evaluation and training transforms, with
    `workers` processes), the eval forward and a training step; float64 matmul seconds per FLOP. `overlap`: whether
    the loader's workers run beside the compute (see `overlaps`). `step` and `load_train` are None when not
    measured (no stage trains, or the model cannot). `n_images`: the real images timed (warm-up excluded)."""
    load_eval: float
    forward: float
    matmul: float
    workers: int
    overlap: bool
    n_images: int
    load_train: float | None = None
    step: float | None = None
    write: float | None = None   # seconds per byte of a capture's chunk writes (checksum included); None: not timed


def overlaps(workers: int, device) -> bool:
    """The overlap model of a stage that streams images: the loader's worker processes decode the next batches
    while the main process computes on the current one, so an image costs max(loader, compute) — when they do not
    compete for the same hardware. On CUDA the compute runs on the GPU: max. On the CPU the workers and torch's
    threads share the cores. Each term was measured alone, with the cores it asks for; when together they ask for
    more cores than there are, they take turns and the two add up (pessimistic for a loader that waits on disk
    rather than computing), else max. With 0 workers the loader runs in the calling thread: always the sum."""
    if workers <= 0:
        return False
    if torch.device(device).type == "cuda":
        return True
    return workers + torch.get_num_threads() <= usable_cores()


def stream(n: float, load_s: float, compute_s: float, term: str, overlap: bool) -> dict[str, float]:
    """Seconds of `n` images streamed through the loader into a compute of `compute_s` per image, attributed to the
    term(s) on the critical path: overlapped, all of it to the slower; otherwise each its own."""
    if overlap:
        return {LOADER: n * load_s} if load_s >= compute_s else {term: n * compute_s}
    return {LOADER: n * load_s, term: n * compute_s}


def _add(*parts: dict[str, float], times: float = 1.0) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v * times
    return out


@dataclasses.dataclass
class Row:
    """One stage: what it does (`work`, with units) and its seconds by term."""
    stage: str
    work: str
    terms: dict[str, float]

    @property
    def seconds(self) -> float:
        return float(sum(self.terms.values()))

    @property
    def bound(self) -> str:
        """The term that takes most of this stage's time."""
        return max(self.terms, key=self.terms.get) if self.terms else ""


@dataclasses.dataclass
class Estimate:
    rows: list[Row]
    rates: Rates | None

    @property
    def total(self) -> float:
        return float(sum(r.seconds for r in self.rows))

    def shares(self) -> dict[str, float]:
        """Each term's share of the study's estimated time, in % (largest first)."""
        tot = _add(*(r.terms for r in self.rows))
        s = sum(tot.values())
        return {k: 100.0 * v / s for k, v in sorted(tot.items(), key=lambda kv: -kv[1])} if s > 0 else {}

    def dominant(self) -> tuple[str, float]:
        """(term, % of the study's time) of the term that dominates the whole study."""
        sh = self.shares()
        return next(iter(sh.items())) if sh else ("", 0.0)


# ------------------------------------------------------------------------------------------------------ measuring
def _clock(dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _load(loader: Loader, idx, batch: int, seeds=None) -> tuple[float, list, list]:
    """Seconds to bring the items `idx` through `loader` onto its device, and the (x, y) batches."""
    dev = loader.device
    xs, ys = [], []
    t = _clock(dev)
    for x, y in loader.batches(idx, batch, seeds=seeds):
        xs.append(x)
        ys.append(y)
    return _clock(dev) - t, xs, ys


def _share(n: int, workers: int) -> int:
    # one batch per worker: DataLoader hands whole batches to workers, so fewer batches than workers would leave
    # some idle and time the loader below its throughput
    return max(1, math.ceil(n / max(workers, 1)))


def _batch(fits: float, stage_batch: int) -> int:
    """The stage's batch size, or as many images as fit the time budget when fewer — but not below MIN_BATCH (a
    batch of 2 runs far below the per-image rate of a real one on a CPU) — and at least 2 (batch norm trains)."""
    return int(max(2, min(stage_batch, max(fits, MIN_BATCH))))


def _rebatch(xs: list, ys: list, b: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = torch.cat(xs), torch.cat(ys)
    return [(x[lo:lo + b], y[lo:lo + b]) for lo in range(0, len(x), b)]


def _warm_and_time(loader: Loader, warm, timed, batch: int, augment_seed: int | None = None):
    """Load `warm` (untimed: the workers start, import and warm up; one item each at least), then time `timed`
    through `loader` (augmented with per-item seeds from `augment_seed` when given, as training draws them).
    Returns (seconds per timed image, the timed (x, y) in batches of `batch`)."""
    def seeds(k):
        return None if augment_seed is None else item_seeds(augment_seed, 1, k)
    _load(loader, warm, _share(len(warm), loader.workers), seeds(len(warm)))
    secs, xs, ys = _load(loader, timed, _share(len(timed), loader.workers), seeds(len(timed)))
    return secs / len(timed), _rebatch(xs, ys, batch)


def _split(n_total: int, n_warm: int, n_timed: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of the dataset's real indices (as the stages draw theirs), cut into warm-up and timed
    items, disjoint while the dataset has enough (a file read twice would come from the page cache)."""
    idx = np.random.default_rng(seed).choice(n_total, size=min(n_total, n_warm + n_timed), replace=False)
    warm, timed = idx[:n_warm], idx[n_warm:]
    if len(timed) < min(n_timed, 2):
        timed = idx[:n_timed]
    return warm, timed


def _best(fn, batches: list, dev: torch.device) -> float:
    """Seconds per image of `fn(x, y)`: after a warm-up on the first batch, the fastest of the batches timed one by
    one (best-of, as benchmarks do: another process taking the cores for a moment is not the study's cost)."""
    fn(*batches[0])
    best = math.inf
    for x, y in batches:
        t = _clock(dev)
        fn(x, y)
        best = min(best, (_clock(dev) - t) / len(x))
    return best


def _forward_rate(forward, batches: list, dev: torch.device) -> float:
    """Seconds per image of the eval forward (no gradients)."""
    with torch.no_grad():
        return _best(lambda x, _: forward(x), batches, dev)


def _step_rate(module, batches: list, dev: torch.device, prec: str) -> float:
    """Seconds per image of a training step (forward, backward, optimizer step at the training precision); the
    weights, buffers (BN running statistics), gradients, mode and RNG state are left exactly as they were."""
    from . import precision
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {n: p.grad for n, p in module.named_parameters()}
    was_training = module.training
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.0)

    def step(x, y):
        with precision.autocast(prec, dev):
            loss = torch.nn.functional.cross_entropy(module(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # dropout draws from torch's generator
            module.train()
            return _best(step, batches, dev)
    finally:
        with torch.no_grad():
            module.load_state_dict(state)  # copies in place: the same tensors, the same bits
        for n, p in module.named_parameters():
            p.grad = grads[n]
        module.train(was_training)


def _matmul_rate() -> float:
    a = np.random.default_rng(0).standard_normal((4096, 256))
    a.T @ a  # warm-up
    t = time.perf_counter()
    for _ in range(2):
        a.T @ a
    return (time.perf_counter() - t) / 2 / (4096 * 256 * 256)


def measure(model, eval_dataset, train_dataset=None, *, workers: int | None = None, device=None,
            eval_batch: int = 128, train_batch: int = 128, train_precision: str = "fp32",
            budget_s: float = BATCH_SECONDS, seed: int = 0) -> Rates:
    """Time real images of `eval_dataset` (evaluation transform) and, when given, `train_dataset` (training
    transform) through Loaders of `workers` processes, the eval forward of `model` on them and a training step.

    Batches are the stages' sizes (`eval_batch`, `train_batch`), made smaller when one would take longer than
    `budget_s` here (sized from the forward of the warm-up images), so the whole measurement takes a few seconds.
    Three evaluation batches and two training batches are loaded; the forward and the step are timed on each after
    a warm-up on the first (the fastest counts)."""
    from . import precision
    module = getattr(model, "module", None)  # a torch model; another runs through its adapter, and never trains
    forward = module if module is not None else (lambda x: model.run(x)[0])
    dev = torch.device(device if device is not None else getattr(model, "device", "cpu"))
    loader = Loader(eval_dataset, workers=workers, device=dev)
    n_warm = max(loader.workers, PROBE)  # an item for every worker: each one starts, imports and warms up
    warm, timed = _split(len(eval_dataset), n_warm, 3 * max(2, eval_batch), seed)
    was_training = module is not None and module.training
    try:
        if module is not None:
            module.eval()
        # the warm-up images' forward (timed after an untimed one) sizes the batches to the budget
        _, px, _ = _load(loader, warm, _share(len(warm), loader.workers))
        probe = torch.cat(px)[:PROBE]
        per_image = max(_forward_rate(forward, [(probe, None)] * 3, dev), 1e-9)
        b_eval = _batch(budget_s / per_image, eval_batch)
        timed = timed[:3 * b_eval]
        dt, xs, ys = _load(loader, timed, _share(len(timed), loader.workers))
        load_eval = dt / len(timed)
        batches = _rebatch(xs, ys, b_eval)
        fwd = _forward_rate(forward, batches, dev)
        n_images = sum(len(x) for x, _ in batches)
    finally:
        loader.close()
        if module is not None:
            module.train(was_training)
    load_train = step = None
    if train_dataset is not None and module is not None and "gradients" in getattr(model, "capabilities", ()):
        b_train = _batch(budget_s / (3 * per_image), train_batch)
        tw, tt = _split(len(train_dataset), n_warm, 2 * b_train, seed + 1)
        tl = Loader(train_dataset, workers=workers, device=dev)
        try:
            load_train, tb = _warm_and_time(tl, tw, tt, b_train, augment_seed=seed)
        finally:
            tl.close()
        step = _step_rate(module, tb, dev, precision.resolve(train_precision, dev))
        n_images += sum(len(x) for x, _ in tb)
    return Rates(load_eval=load_eval, forward=fwd, matmul=_matmul_rate(), workers=loader.workers,
                 overlap=overlaps(loader.workers, dev), n_images=n_images, load_train=load_train, step=step,
                 write=_write_rate())


def _write_rate(n_arrays: int = 16, nbytes: int = 1 << 20) -> float:
    """Seconds per byte of writing a capture chunk: `n_arrays` uncompressed float32 zarr arrays of `nbytes` each
    written at once (`store.write_many`, as capture does) into a temporary folder, with their CRC-32 (the fastest of
    two writes counts)."""
    import tempfile

    import zarr

    from . import integrity, store
    data = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="chanaxis-estimate-") as d:
        g = zarr.open_group(d, mode="w")
        arrays = [g.create_array(f"a{k}", shape=(2, data.size), chunks=(1, data.size), dtype="float32",
                                 compressors=None) for k in range(n_arrays)]
        best = math.inf
        for row in range(2):
            t = time.perf_counter()
            store.write_many([(a, row, data) for a in arrays])
            for _ in arrays:
                integrity.crc(data)
            best = min(best, time.perf_counter() - t)
    return best / (n_arrays * data.nbytes)


# ------------------------------------------------------------------------------------------------------ the stages
def _capture_bytes(graph, n_images: int, cap, n_classes: int) -> int:
    """Bytes the capture of `n_images` writes (`chanaxis.stages.capture.store_bytes`)."""
    from .stages.capture import store_bytes
    layers = {l: (min(cap.spatial_samples, int(np.prod(graph[l].out_hw))), graph[l].c_out)
              for l in (cap.layers or graph.names)}
    return store_bytes(n_images, layers, cap.dtype, n_classes)


def _recipe(study, card) -> tuple[int, int]:
    """(epochs, batch size) of the study's training, as the train stage will resolve them."""
    from .errors import ChanaxisError
    from .training import resolve_recipe
    p = study.params["train"]
    try:
        name = study.model_spec if isinstance(study.model_spec, str) else None
        r = resolve_recipe(card, name, dict(p.recipe or ()), p.epochs, p.batch_size)
        return r["epochs"], r["batch_size"]
    except ChanaxisError:  # training will say what is wrong; the estimate takes the card's values
        return p.epochs or int(card.recipe.get("epochs", 30)), p.batch_size or int(card.recipe.get("batch_size", 128))


def estimate_stages(study, stages: list[str]) -> Estimate:
    """Every stage of `stages` as a Row, from `measure` on the study's own data and model."""
    from .data import load_dataset
    if not [s for s in stages if s != "report"]:
        return Estimate([Row("report", "tables and figures", {REPORT: 5.0})] if "report" in stages else [], None)
    card = study.card()
    p = study.params
    # the study's own build once training is done (no extra build); else one untrained build, timed the same
    model = study.ctx.model(study.run) if study.done("train") else study.load_model()
    graph = model.graph
    size = model.input_size[1]
    epochs, train_bs = _recipe(study, card)
    n_train = study.train_images()  # the dataset was found before any estimate: no fallback size
    pr = p["prune"]
    trains = "train" in stages or ("prune" in stages and pr.finetune_epochs > 0)
    cap = p["capture"]
    eval_ds = load_dataset(study.dataset, split=cap.split, root=study.data_root, transform="eval",
                           image_size=size).dataset
    train_ds = (load_dataset(study.dataset, split="train", root=study.data_root, transform="train",
                             image_size=size).dataset if trains else None)
    n_evalsplit = (len(load_dataset(study.dataset, split="eval", root=study.data_root, image_size=size).dataset)
                   if {"train", "lesion", "prune"} & set(stages) else 0)
    rates = measure(model, eval_ds, train_ds, workers=study.ctx.loader_workers, device=study.device,
                    eval_batch=cap.chunk_images, train_batch=train_bs if "train" in stages else pr.batch_size,
                    train_precision=p["train"].precision)
    ov, le, fwd, mm = rates.overlap, rates.load_eval, rates.forward, rates.matmul
    # not measured when the model cannot train (its train or fine-tuning stage will refuse): a guess, not a failure
    lt = rates.load_train if rates.load_train is not None else le
    step = rates.step if rates.step is not None else 3 * fwd
    spi = [min(16, l.out_hw[0] * l.out_hw[1]) for l in graph.layers]
    cov_flops = sum(s * l.c_out ** 2 for s, l in zip(spi, graph.layers))
    per_layer = {PER_LAYER: 2.0 * len(graph)}  # hulls, clustering and modularity: about 2 s per layer
    n_cal = min(cap.n_calibration, len(eval_ds))
    rows = []
    for s in stages:
        if s == "train":
            tp = p["train"]
            n_tr = min(n_train, tp.train_subset or n_train)
            per_epoch = min(n_tr, tp.max_batches_per_epoch * train_bs) if tp.max_batches_per_epoch else n_tr
            n_ev = min(n_evalsplit, tp.eval_subset or n_evalsplit)
            # every epoch streams its augmented batches into training steps, then evaluates (also before epoch 1)
            rows.append(Row(s, f"{epochs} epochs × {per_epoch} images",
                            _add(_add(stream(per_epoch, lt, step, STEP, ov), times=epochs),
                                 _add(stream(n_ev, le, fwd, FORWARD, ov), times=epochs + 1))))
        elif s == "capture":
            # the forward with its hooks and the sampled activations: about half as much again as a bare one; the
            # store's writes run in a thread beside it (the capture takes the longer of the two)
            compute = stream(n_cal, le, fwd * 1.5, FORWARD, ov)
            writes = _capture_bytes(graph, n_cal, cap, model.num_classes) * (rates.write or 0.0)
            rows.append(Row(s, f"{n_cal} images", {WRITE: writes} if writes > sum(compute.values()) else compute))
        elif s == "metrics":
            n_geo = min(n_cal, p["metrics"].geometry_images)
            rows.append(Row(s, f"{len(graph)} layers, {n_cal} images",
                            _add({COV: 2 * n_cal * cov_flops * mm}, per_layer,
                                 stream(n_geo, le, fwd, FORWARD, ov))))
        elif s == "trajectory":
            from .errors import ChanaxisError
            from .training import parse_schedule
            tj = p["trajectory"]
            try:
                n_ck = len(parse_schedule(p["train"].checkpoints, epochs))
            except ChanaxisError:
                n_ck = 8
            n = min(tj.n_calibration, len(eval_ds))
            geo = stream(min(n, tj.geometry_images), le, fwd, FORWARD, ov) if tj.grad_cos else {}
            per_ck = _add(stream(n, le, fwd * 1.5, FORWARD, ov), geo, {COV: 2 * n * cov_flops * mm}, per_layer)
            rows.append(Row(s, f"{n_ck} checkpoints × {n} images", _add(per_ck, times=n_ck)))
        elif s == "lesion":
            lp = p["lesion"]
            n_units = sum(l.c_out for l in graph.layers)
            n_eval = min(n_evalsplit, lp.eval_images or n_evalsplit)
            n_les = int(np.ceil(n_units * lp.fraction))
            # the evaluation images are loaded once, before any lesion; each lesion runs the damage and four
            # replacement variants over the suffix of the network (~half)
            rows.append(Row(s, f"{n_les} channels × {n_eval} images",
                            {LOADER: n_eval * le, FORWARD: n_les * n_eval * fwd * 5 * 0.5}))
        elif s == "prune":
            n_methods = len(pr.methods or range(11))
            n_levels, n_seeds = len(pr.levels), len(pr.seeds)
            n_eval = min(n_evalsplit, pr.eval_images or n_evalsplit)
            n_cells = n_methods * n_levels * n_seeds
            cell = {FORWARD: n_eval * fwd * 2}  # one-shot and fine-tuned evaluations
            if pr.finetune_epochs > 0:
                n_b = min(pr.finetune_batches, max(1, n_train // pr.batch_size))
                cell = _add(cell, stream(pr.finetune_epochs * n_b * pr.batch_size, lt, step, STEP, ov))
            rows.append(Row(s, f"{n_methods} methods × {n_levels} levels × {n_seeds} seeds",
                            _add({LOADER: n_eval * le}, _add(cell, times=n_cells))))
        elif s == "report":
            rows.append(Row(s, "tables and figures", {REPORT: 5.0}))
    return Estimate(rows, rates)
