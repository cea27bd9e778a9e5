"""Training with a checkpoint schedule (METHOD §5, §8): the data card's recipe, resumable, deterministic on CPU.

A run folder holds ``manifest.json`` (what was trained and what was saved), ``checkpoints/epoch_XXXX.pt`` (state
dicts at the scheduled epochs, epoch 0 = initialisation), ``checkpoints/best.pt`` and ``state.pt`` (model, optimiser,
scheduler, RNG states, history) written atomically after every epoch. Each epoch reseeds every RNG from
(seed, epoch), so an epoch is a pure function of the state it starts from: a run killed at any moment and rerun
continues from ``state.pt`` and ends with the weights of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .version import __version__
from . import precision
from .locations import is_url, location
from .data.loader import item_seeds
from .errors import ChanaxisError
from .evaluation import evaluate, module_forward
from .checkpoints import KIND, MANIFEST, read_manifest
from .params import Params, as_pairs, param
from .progress import progress_bar
from .stage import Context, Stage, Unit, api, run_stage

# every key a data card's [recipe] (or a user override) may carry; anything else is a typo worth stopping for
RECIPE_KEYS = frozenset({"source", "optimizer", "lr", "momentum", "nesterov", "schedule", "epochs", "weight_decay",
                         "batch_size", "pretrained_lr_scale", "augmentation", "lr_by_model"})
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
STATE = "state.pt"


@dataclass(frozen=True)
class TrainParams(Params):
    epochs: int | None = param(None, "training epochs", "epochs", ge=1, none="the card's recipe")
    checkpoints: tuple[int, ...] | None = param(None, "epochs whose weights are saved, e.g. 0,1,2,3,5,10,20 (0 = the "
                                                "initialisation)", "epochs", ge=0,
                                                none="0,1,2,3,5,10,20,40,… and the last epoch")
    seed: int = param(0, "initialisation, data order and augmentation seed")
    pretrained: bool = param(False, "start from timm's pretrained backbone (trained at lr × pretrained_lr_scale)")
    batch_size: int | None = param(None, "images per training batch", "images", ge=1, none="the card's recipe")
    max_batches_per_epoch: int | None = param(None, "at most this many batches per epoch", "batches", ge=1,
                                              none="the whole split", aliases=("--max-batches",))
    train_subset: int | None = param(None, "train on a fixed random subset of this many images", "images", ge=1,
                                     none="the whole split")
    eval_subset: int | None = param(None, "evaluate on a fixed random subset of this many images", "images", ge=1,
                                    none="the whole split")
    precision: str = param("auto", "training precision: bf16 autocast with channels_last memory, or fp32 (auto: "
                           "bf16 on CUDA, fp32 elsewhere)", choices=precision.CHOICES)
    recipe: tuple[tuple[str, Any], ...] | None = param(None, "recipe fields overriding the card's (optimizer, lr, "
                                                       "momentum, nesterov, schedule, weight_decay, …)",
                                                       none="the card's recipe", cli=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe", as_pairs(self.recipe))  # a dict is accepted, kept as pairs
        super().__post_init__()


def default_schedule(epochs: int) -> list[int]:
    """{0, 1, 2, 3, 5, 10, 20, 40, ...} (dense early, then doubling) up to and including the last epoch (chosen)."""
    out, e = [0, 1, 2, 3, 5], 10
    while e < epochs:
        out.append(e)
        e *= 2
    return sorted({x for x in out if x <= epochs} | {epochs})


def parse_schedule(text: str | list | tuple | None, epochs: int) -> list[int]:
    if text is None:
        return default_schedule(epochs)
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sched = sorted({int(str(x).strip()) for x in items if str(x).strip() != ""})
    except ValueError:
        raise ChanaxisError(f"checkpoint schedule {text!r} is not a comma-separated list of epochs, e.g. 0,1,2,3,5"
                            ) from None
    if not sched:
        raise ChanaxisError("the checkpoint schedule is empty; give epochs like 0,1,2,3,5")
    if sched[0] < 0:
        raise ChanaxisError(f"checkpoint epoch {sched[0]} is negative; epochs count from 0 (the initialisation)")
    if sched[-1] > epochs:
        raise ChanaxisError(f"checkpoint epoch {sched[-1]} is beyond the {epochs} training epochs; drop it or pass "
                            f"--epochs {sched[-1]}")
    return sched


def resolve_recipe(card, model_name: str | None, overrides: dict | None = None, epochs: int | None = None,
                   batch_size: int | None = None) -> dict[str, Any]:
    """The card's recipe for ``model_name`` with the user's overrides, validated."""
    for where, keys in (("data card " + card.name, card.recipe), ("recipe override", overrides or {})):
        unknown = sorted(set(keys) - RECIPE_KEYS)
        if unknown:
            raise ChanaxisError(f"unknown recipe field {unknown[0]!r} in the {where}; known fields: "
                                f"{', '.join(sorted(RECIPE_KEYS - {'lr_by_model'}))}")
    r = card.recipe_for(model_name)
    r.update({k: v for k, v in (overrides or {}).items() if k != "lr_by_model"})
    if epochs is not None:
        r["epochs"] = epochs
    if batch_size is not None:
        r["batch_size"] = batch_size
    r.setdefault("momentum", 0.9)
    r.setdefault("nesterov", False)
    r.setdefault("weight_decay", 0.0)
    r.setdefault("pretrained_lr_scale", 0.1)
    r.setdefault("schedule", "cosine")
    missing = [k for k in ("optimizer", "lr", "epochs", "batch_size") if k not in r]
    if missing:
        raise ChanaxisError(f"the data card {card.name} has no recipe {missing[0]!r}; pass it with --recipe "
                            f"{missing[0]}=VALUE")
    r["optimizer"] = str(r["optimizer"]).lower()
    r["schedule"] = str(r["schedule"]).lower()
    if r["optimizer"] not in OPTIMIZERS:
        raise ChanaxisError(f"unknown optimizer {r['optimizer']!r}; use one of {', '.join(OPTIMIZERS)}")
    if r["schedule"] not in SCHEDULES:
        raise ChanaxisError(f"unknown schedule {r['schedule']!r}; use one of {', '.join(SCHEDULES)}")
    for k, kind in (("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float),
                    ("momentum", float), ("pretrained_lr_scale", float)):
        try:
            r[k] = kind(r[k])
        except (TypeError, ValueError):
            raise ChanaxisError(f"recipe {k}={r[k]!r} is not a number") from None
    if r["epochs"] < 1 or r["batch_size"] < 1 or r["lr"] <= 0:
        raise ChanaxisError(f"recipe needs epochs ≥ 1, batch_size ≥ 1 and lr > 0 (got epochs={r['epochs']}, "
                            f"batch_size={r['batch_size']}, lr={r['lr']})")
    return r


# ------------------------------------------------------------------------------------------------ small helpers

def _atomic_save(obj, path: Path) -> None:
    if is_url(path):  # an object store's PUT is atomic: the object is whole or absent
        with path.open("wb") as f:
            torch.save(obj, f)
        return
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj, path: Path) -> None:
    if is_url(path):
        path.write_text(json.dumps(obj, indent=1, default=str))
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _subset_indices(n_total: int, n: int | None, seed: int, stream: int) -> np.ndarray | None:
    if n is None or n >= n_total:
        return None
    if n < 1:
        raise ChanaxisError(f"a subset of {n} images is empty; give a positive --train-subset/--eval-subset")
    return np.sort(np.random.default_rng([seed, stream]).choice(n_total, n, replace=False))


def param_groups(module: nn.Module, head_prefixes: tuple[str, ...], recipe: dict, pretrained: bool) -> list[dict]:
    """METHOD §8: a pretrained backbone trains at lr × pretrained_lr_scale, the new head at the full lr."""
    if not pretrained:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": recipe["lr"]}]
    head, body = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (head if name.split(".")[0] in head_prefixes else body).append(p)
    groups = [{"params": body, "lr": recipe["lr"] * recipe["pretrained_lr_scale"], "name": "backbone"}]
    if head:
        groups.append({"params": head, "lr": recipe["lr"], "name": "head"})
    return groups


def _optimizer(groups, r: dict) -> torch.optim.Optimizer:
    if r["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=r["lr"], momentum=r["momentum"], nesterov=bool(r["nesterov"]) and
                               r["momentum"] > 0, weight_decay=r["weight_decay"])
    cls = torch.optim.Adam if r["optimizer"] == "adam" else torch.optim.AdamW
    return cls(groups, lr=r["lr"], weight_decay=r["weight_decay"])


def _scheduler(opt, r: dict):
    if r["schedule"] == "cosine":  # stepped once per epoch, over the epochs actually trained
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"])
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)


# ------------------------------------------------------------------------------------------------------- training

def _open_model(spec, card, seed: int, pretrained: bool, device: str):
    from .registry import load_model
    if hasattr(spec, "module") and hasattr(spec, "spec"):
        return spec
    return load_model(spec, num_classes=card.num_classes, image_size=card.image_size, init_seed=seed,
                      pretrained=pretrained, device=device)


def _identity(m: dict) -> dict:
    """What makes two runs the same run: rerunning with these equal resumes, anything else is refused."""
    model = {k: v for k, v in m["model"].items() if k not in ("checkpoint", "unexpected_keys")}
    return {"model": model, **{k: m.get(k) for k in ("dataset", "seed", "recipe", "pretrained", "schedule",
                                                      "max_batches_per_epoch", "precision")}}


def _check_out_dir(out: Path, manifest: dict) -> dict | None:
    """The existing manifest when ``out`` holds this same run, None when ``out`` is new; else a ChanaxisError."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ChanaxisError(f"--out '{out}' is a file; give a folder for the training run")
    if not (out / MANIFEST).exists():
        if any(out.iterdir()):
            raise ChanaxisError(f"'{out}' exists and is not a chanaxis training run; choose another --out")
        return None
    old = read_manifest(out)
    a, b = _identity(old), _identity(manifest)
    if a != b:
        diff = [k for k in a if a[k] != b.get(k)]
        parts = []
        for k in diff:
            if isinstance(a[k], dict) and isinstance(b.get(k), dict):
                sub = [s for s in set(a[k]) | set(b[k]) if a[k].get(s) != b[k].get(s)]
                parts.append(f"{k}.{sorted(sub)[0]}: {a[k].get(sorted(sub)[0])!r} there, "
                             f"{b[k].get(sorted(sub)[0])!r} now" if sub else k)
            else:
                parts.append(f"{k}: {a[k]!r} there, {b.get(k)!r} now")
        raise ChanaxisError(f"'{out}' holds a different training run ({'; '.join(parts)}); use another --out or the "
                            "same options to resume it")
    return old


class TrainStage(Stage):
    """Training (METHOD §5, §8) into a run folder (`run`). Each epoch needs the last, so the stage has one unit, the
    resumable epoch loop; the manifest says when it is done.

    `ctx.inputs`: `model_spec` (a timm name, a `Model` or an nn.Module) and `dataset` (a data card name);
    `ctx.device` and `ctx.data_root` say where it runs and where the data lies."""

    name = "train"
    requires = ("train_step",)
    study_path = "train"
    Params = TrainParams
    presets = {"quick": TrainParams(epochs=5, checkpoints=(0, 1, 3, 5), train_subset=12000, eval_subset=2000),
               "paper": TrainParams()}
    help = "train a model with the data card's recipe, saving checkpoints on a schedule"

    def job(self, run, ctx: Context) -> "_Job":
        return ctx.memo(("train", str(run)), lambda: _Job(location(run), ctx, self))

    def prepare(self, run, ctx: Context) -> None:
        self.job(run, ctx)  # checks the inputs against the folder, writes the manifest of a new run

    def units(self, run) -> list[Unit]:
        return [] if self.done(run) else [Unit("train", work=read_manifest(run)["recipe"]["epochs"])]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        self.job(run, ctx).run(ctx)

    def finish(self, run, ctx: Context) -> dict:
        ctx.forget("train")
        return read_manifest(run)

    def done(self, run) -> bool:
        return (location(run) / MANIFEST).is_file() and read_manifest(run)["status"] == "done"


class _Job:
    """One training run: its recipe, schedule, data, model and manifest, checked against what ``out`` holds."""

    def __init__(self, out: Path, ctx: Context, stage: TrainStage):
        from .data import get_card, indices_sha256, load_dataset
        p = stage.params
        spec, dataset = ctx.inputs.get("model_spec"), ctx.inputs.get("dataset")
        if spec is None or dataset is None:
            raise ChanaxisError("training needs a model and a dataset (chanaxis train MODEL --dataset D --out DIR)")
        card = get_card(dataset)
        name = spec if isinstance(spec, str) else None
        self.r = r = resolve_recipe(card, name or getattr(spec, "spec", {}).get("name"), dict(p.recipe or ()),
                                    p.epochs, p.batch_size)
        self.schedule = parse_schedule(p.checkpoints, r["epochs"])
        root, size = ctx.data_root, card.image_size
        self.train_h = load_dataset(dataset, split="train", root=root, transform="train", image_size=size)
        self.eval_h = load_dataset(dataset, split="eval", root=root, transform="eval", image_size=size)
        self.tr_idx = _subset_indices(len(self.train_h), p.train_subset, p.seed, 1)
        self.ev_idx = _subset_indices(len(self.eval_h), p.eval_subset, p.seed, 2)
        self.model = _open_model(spec, card, p.seed, p.pretrained, ctx.device)
        stage.check_capabilities(self.model)
        tr_idx, ev_idx, train_h = self.tr_idx, self.ev_idx, self.train_h
        self.manifest = {
            "kind": KIND, "chanaxis_version": __version__,
            "model": {k: v for k, v in self.model.spec.items() if k != "unexpected_keys"},
            "dataset": {"name": card.name, "root": train_h.root, "train_split": train_h.split,
                        "eval_split": self.eval_h.split, "train_subset": None if tr_idx is None else len(tr_idx),
                        "train_indices_sha256": None if tr_idx is None else indices_sha256(tr_idx),
                        "eval_subset": None if ev_idx is None else len(ev_idx), "augment": dict(card.augment)},
            "recipe": r, "seed": p.seed, "pretrained": bool(p.pretrained), "schedule": self.schedule,
            "max_batches_per_epoch": p.max_batches_per_epoch, "device": ctx.device,
            "precision": precision.resolve(p.precision, ctx.device),
            "units": {"loss": "nats (mean cross-entropy)", "acc": "%", "seconds": "s"},
            "status": "running", "epochs_done": -1, "history": [], "checkpoints": {}, "best": None, "resumed_at": [],
        }
        old = _check_out_dir(out, self.manifest)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if old is None:
            _atomic_json(self.manifest, out / MANIFEST)
        self.out, self.p = out, p

    def run(self, ctx: Context) -> None:
        """The epoch loop, deterministic (torch's deterministic algorithms, per-epoch seeds) and resumable."""
        dev = torch.device(ctx.device)
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        if dev.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            # the stage's own bar when run by run_stage (one live display), else one of its own
            with contextlib.nullcontext(ctx.bar) if ctx.bar is not None else progress_bar(ctx.progress) as bar:
                self._loop(dev, bar, ctx)
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

    def _loop(self, dev, bar, ctx: Context) -> None:
        model, module, manifest, out, r, schedule = (self.model, self.model.module, self.manifest, self.out, self.r,
                                                     self.schedule)
        seed, max_batches = self.p.seed, self.p.max_batches_per_epoch
        prec = manifest["precision"]
        precision.to_device_layout(module, dev)
        opt = _optimizer(param_groups(module, tuple(getattr(model, "exclude_prefixes", ())), r, self.p.pretrained), r)
        sched = _scheduler(opt, r)
        state_path = out / STATE
        ckpt_dir = out / "checkpoints"
        start = 0
        if state_path.exists():
            try:
                with state_path.open("rb") as f:
                    st = torch.load(f, map_location=dev, weights_only=False)
            except Exception as e:  # noqa: BLE001 - a damaged state file is the folder's fault
                raise ChanaxisError(f"cannot read '{state_path}' ({type(e).__name__}); delete it to restart the run "
                                    "from scratch") from None
            module.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            manifest.update({k: st["manifest"][k] for k in ("history", "checkpoints", "best", "resumed_at")})
            start = st["epoch"] + 1
            if start <= r["epochs"]:
                manifest["resumed_at"].append(start)
        train_loader, eval_loader = ctx.loader(self.train_h.dataset), ctx.loader(self.eval_h.dataset)
        tr_idx = np.arange(len(self.train_h)) if self.tr_idx is None else self.tr_idx
        ev_idx = np.arange(len(self.eval_h)) if self.ev_idx is None else self.ev_idx
        n_train = len(tr_idx)
        n_batches = -(-n_train // r["batch_size"])
        if max_batches:
            n_batches = min(n_batches, max_batches)

        def finish_epoch(epoch: int, row: dict) -> None:
            manifest["history"] = [h for h in manifest["history"] if h["epoch"] < epoch] + [row]
            sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            if epoch in schedule:
                rel = f"checkpoints/epoch_{epoch:04d}.pt"
                _atomic_save(sd, out / rel)
                manifest["checkpoints"][str(epoch)] = rel
            best = manifest["best"]
            if best is None or row["eval_acc"] > best["eval_acc"]:
                _atomic_save(sd, ckpt_dir / "best.pt")
                manifest["best"] = {"epoch": epoch, "eval_acc": row["eval_acc"], "path": "checkpoints/best.pt"}
            manifest["epochs_done"] = epoch
            # the manifest first, the state last: a kill in between only makes the next run redo this epoch
            _atomic_json(manifest, out / MANIFEST)
            _atomic_save({"epoch": epoch, "model": sd, "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "rng": _rng_state(),
                          "manifest": {k: manifest[k] for k in ("history", "checkpoints", "best", "resumed_at")}},
                         state_path)
            if epoch == r["epochs"]:  # "done" only once state.pt is final too: the stage's done() reads it
                manifest["status"] = "done"
                _atomic_json(manifest, out / MANIFEST)

        def measure() -> tuple[float, float]:
            fwd = module_forward(module, dev)
            with precision.autocast(prec, dev):
                loss, acc = evaluate(lambda x: fwd(precision.input_layout(x, dev)),
                                     eval_loader.batches(ev_idx, r["batch_size"]))
            return float(loss), float(acc)

        total, done = r["epochs"] * n_batches, max(0, start - 1) * n_batches
        if bar is ctx.bar:  # the stage's own bar (run_stage): its total becomes the training steps
            tick = ctx.steps(total, done)
        else:
            task = bar.add_task("train", total=total, completed=done)

            def tick(n=1, description=None):
                bar.update(task, advance=n, **({"description": description} if description else {}))
        if start == 0:
            t0 = time.perf_counter()
            el, ea = measure()
            finish_epoch(0, {"epoch": 0, "train_loss": None, "train_acc": None, "eval_loss": el, "eval_acc": ea,
                             "lr": None, "seconds": time.perf_counter() - t0})
            bar.console.print(f"epoch 0 (initialisation): eval loss {el:.4f} nats, eval accuracy {ea:.2f} %")
            start = 1
        for epoch in range(start, r["epochs"] + 1):
            t0 = time.perf_counter()
            _seed_all(_epoch_seed(seed, epoch))  # augmentation, dropout: a function of (seed, epoch) only
            order = tr_idx[epoch_order(n_train, seed, epoch)][:n_batches * r["batch_size"]]
            module.train()
            loss_sum, correct, n = 0.0, 0, 0
            lr = opt.param_groups[-1]["lr"]
            # augmentation is seeded per item (seed, epoch, position): the same whatever --loader-workers
            for x, y in train_loader.batches(order, r["batch_size"], seeds=item_seeds(seed, epoch, len(order))):
                with precision.autocast(prec, dev):
                    z = module(precision.input_layout(x, dev))
                    loss = nn.functional.cross_entropy(z.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((z.argmax(1) == y).sum())
                n += len(y)
                tick(1, description=f"train epoch {epoch}/{r['epochs']}  loss {loss_sum / n:.3f} nats  acc "
                                    f"{100 * correct / n:.1f} %")
            sched.step()
            el, ea = measure()
            row = {"epoch": epoch, "train_loss": loss_sum / max(n, 1), "train_acc": 100.0 * correct / max(n, 1),
                   "eval_loss": el, "eval_acc": ea, "lr": lr, "seconds": time.perf_counter() - t0}
            finish_epoch(epoch, row)
            bar.console.print(f"epoch {epoch}/{r['epochs']}: train loss {row['train_loss']:.4f} nats, train "
                              f"accuracy {row['train_acc']:.2f} %, eval loss {el:.4f} nats, eval accuracy {ea:.2f} %, "
                              f"{row['seconds']:.1f} s" + ("  [checkpoint]" if epoch in schedule else ""))
        if start > r["epochs"]:  # killed after the last state.pt but before the manifest said "done"
            m = read_manifest(out)
            _atomic_json({**m, "status": "done"}, out / MANIFEST)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of an epoch's n items: a function of (seed, epoch) only."""
    g = torch.Generator()
    g.manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g).numpy()


def train(model, dataset: str, out: str | Path, *, device: str = "cpu", progress: bool = True,
          root: str | None = None, loader_workers: int | None = None, scheduler=None, workers: int | None = None,
          **params) -> dict:
    """Train `model` (a timm name, a `Model` or an nn.Module) on `dataset` from the data card's recipe, saving
    checkpoints at the scheduled epochs into the folder `out`; returns the manifest.

    `recipe` overrides card fields (validated against RECIPE_KEYS); `root` is where the dataset lies. Rerunning the
    same call on a killed run resumes it; on a finished run it returns at once."""
    stage = TrainStage(**params)
    ctx = Context(device=device, progress=progress, data_root=root, model_spec=model, dataset=dataset,
                  loader_workers=loader_workers, scheduler=scheduler, workers=workers)
    return run_stage(stage, out, ctx)


api(TrainStage, train)
