"""`chanaxis analyze`: the whole study of the paper on one model and dataset — a loop over the stage registry.

A study folder holds `study.json` (what study this is), `train/` (checkpoints, when trained here), `run.zarr` (the
trained model's capture, metrics, lesions, pruning, and a copy of the trajectory), `trajectory.zarr`, the figures
and the JSON summary. Stages run in the order their `needs` give; each records completion, so rerunning continues
where it stopped. A preset is a name: each stage's parameters class holds that preset's values.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import stage as stages_api
from .errors import ChanaxisError
from .locations import absolute, location
from .stage import Context

PRESETS = ("quick", "paper")  # quick: a CPU-sized study that still means something; paper: METHOD.md's protocol


def resolve_store(path: str | Path) -> Path:
    """A run store path, or a study folder (→ its run.zarr)."""
    p = location(path)
    if (p / "study.json").is_file():
        return p / "run.zarr"
    return p


def parse_stages(stages) -> list[str]:
    """The asked stages (all when None) in dependency order; an unknown name is an error."""
    every = stages_api.order()
    if stages is None:
        return every
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in every]
    if bad:
        raise ChanaxisError(f"unknown stage '{bad[0]}'; stages are, in order: {', '.join(every)}")
    return stages_api.order(stages)


def study_params(preset: str, overrides: dict | None = None, seeds=None) -> dict:
    """stage name → its parameters: the preset's instance, with `overrides` ({stage: {param: value}}) applied."""
    if preset not in PRESETS:
        raise ChanaxisError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    reg = stages_api.stages()
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    for name in overrides:
        if name not in reg:
            stages_api.get(name)  # raises with the nearest stage name
    if seeds:
        overrides.setdefault("prune", {})["seeds"] = tuple(seeds)
    return {name: cls.Params.make(cls.preset(preset), **overrides.get(name, {})) for name, cls in reg.items()}


class Study:
    def __init__(self, model: str, dataset: str, out: str | Path, checkpoint=None, preset: str = "quick",
                 seeds=None, device: str = "cpu", data_root=None, pretrained: bool | None = None,
                 console: Console | None = None, progress: bool = True, overrides: dict | None = None,
                 loader_workers: int | None = None, scheduler=None, workers: int | None = None):
        self.params = study_params(preset, overrides, seeds)
        self.model_spec, self.dataset, self.out = model, dataset, location(out)
        self.checkpoint = str(absolute(checkpoint)) if checkpoint else None
        self.preset_name, self.device, self.data_root = preset, device, data_root
        self.pretrained = bool(pretrained)
        self.console = console or Console()
        self.progress = progress
        self.identity = {"model": model, "dataset": dataset, "checkpoint": self.checkpoint, "preset": preset,
                         "parameters": {k: v.to_dict() for k, v in self.params.items()}}
        self.run = self.out / "run.zarr"
        self.ctx = Context(device=device, progress=progress, console=self.console, data_root=data_root,
                           loader_workers=loader_workers, scheduler=scheduler, workers=workers,
                           model_factory=self._model, model_spec=model, dataset=dataset, pretrained=self.pretrained,
                           run_dir=str(self.out / "train"), extra_config={"study": str(self.out)})

    def path(self, name: str) -> Path:
        """Where a stage of this study reads and writes (its `study_path`, default the run store)."""
        return self.out / stages_api.get(name).study_path

    def stage(self, name: str):
        return stages_api.get(name)(self.params[name])

    # -------------------------------------------------------------- identity and bookkeeping
    def claim_folder(self) -> None:
        from . import store
        f = self.out / "study.json"
        if f.is_file():
            old = json.loads(f.read_text())
            if old != store.jsonable(self.identity):
                diff = store.config_diff(old, self.identity)
                raise ChanaxisError(f"'{self.out}' holds a different study (differs in: {', '.join(diff)}); "
                                    "choose another --out or rerun with the same options")
        elif self.out.exists() and any(self.out.iterdir()):
            raise ChanaxisError(f"'{self.out}' is not empty and holds no chanaxis study; choose another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(store.jsonable(self.identity), indent=2))
        except OSError as e:
            raise ChanaxisError(f"cannot write the study folder '{self.out}' ({e.strerror}); choose another --out"
                                ) from None

    def skipped(self, name: str) -> str | None:
        """Why a stage does not run in this study (a trained checkpoint was given: no training, no trajectory)."""
        if self.checkpoint and name in ("train", "trajectory"):
            return "a trained checkpoint was given" + ("" if name == "train" else "; no training checkpoints")
        return None

    def done(self, name: str) -> bool:
        if self.skipped(name):
            return True
        return self.stage(name).done(self.path(name))

    def check_order(self, todo: list[str]) -> None:
        for s in todo:
            for need in stages_api.get(s).needs:
                if need not in todo and not self.done(need):
                    raise ChanaxisError(f"stage '{s}' needs '{need}', which has not run in '{self.out}'; "
                                        f"include it: --stages {','.join(parse_stages([need, *todo]))}")

    def trained_checkpoint(self) -> str:
        if self.checkpoint:
            return self.checkpoint
        from .checkpoints import read_manifest
        best = (read_manifest(self.out / "train").get("best") or {}).get("path")
        if not best:
            raise ChanaxisError(f"the training run in '{self.out / 'train'}' has no best checkpoint; rerun the "
                                "train stage (--stages train)")
        return str(self.out / "train" / best)

    def train_images(self) -> int:
        """Images in the dataset's training split; loading it first is how a missing dataset is found before
        anything is timed (the error names the paths tried and how to get the data)."""
        from .data import load_dataset
        return self.ctx.memo(("train_images",), lambda: len(load_dataset(
            self.dataset, split="train", root=self.data_root, image_size=self.card().image_size).dataset))

    def card(self):
        from .data import get_card
        return get_card(self.dataset)

    def load_model(self, checkpoint=None, init_seed: int = 0):
        from .reload import model_for_dataset
        return model_for_dataset(self.model_spec, self.dataset, checkpoint=checkpoint, init_seed=init_seed,
                                 device=self.device)

    def _model(self, run):
        """The study's trained model, built once for every stage after training; checked against the store."""
        from . import store
        model = self.load_model(self.trained_checkpoint())
        if run is not None and location(run).exists():
            want = store.run_config(run).get("weights_sha256")
            if want and model.weights_sha256() != want:
                raise ChanaxisError(f"the trained weights differ from those captured in '{run}' (sha256 mismatch); "
                                    "has the checkpoint changed? Use another --out")
        return model

    # -------------------------------------------------------------- estimates
    def estimate(self, todo: list[str]) -> None:
        """Time real batches of the study's dataset through its loader (decode), the forward and a training step,
        extrapolate every stage, print the table with what bounds each stage and the study."""
        from .estimate import estimate_stages
        est = estimate_stages(self, todo)
        if not est.rows:
            return
        total, r = est.total, est.rates
        where = f"measured on {r.n_images} real images of {self.dataset}" if r else "nothing to measure"
        t = Table(title=f"estimated duration ({self.preset_name} preset, {self.device}, {where})")
        t.add_column("stage", overflow="fold")
        t.add_column("work", overflow="fold")
        t.add_column("estimate", justify="right", overflow="fold")
        t.add_column("bound by", overflow="fold")
        for row in est.rows:
            share = f" ({100 * row.terms[row.bound] / row.seconds:.0f} %)" if row.seconds > 0 else ""
            t.add_row(row.stage, row.work, human(row.seconds), row.bound + share)
        t.add_row("[bold]total", "", f"[bold]{human(total)}", "")
        self.console.print(t)
        if r is not None:
            def ips(s):
                return "not measured" if s is None else f"{1 / s:,.0f} images/s" if s > 0 else "∞ images/s"
            loader = f"{r.workers} worker processes" if r.workers else "in the main process (0 workers)"
            mode = "overlapping the compute" if r.overlap else "adding to the compute (shared cores)"
            self.console.print(
                f"measured: loader {ips(r.load_eval)} (evaluation transform), {ips(r.load_train)} (training "
                f"transform), {loader}, {mode}; forward {ips(r.forward)}; training step {ips(r.step)}; float64 "
                f"matmul {1e-9 / r.matmul:,.1f} GFLOP/s")
        term, pct = est.dominant()
        if term and total > 0:
            rest = ", ".join(f"{k} {v:.0f} %" for k, v in list(est.shares().items())[1:])
            self.console.print(f"dominant term: [bold]{term}[/], {pct:.0f} % of the estimated {human(total)}"
                               + (f" (then {rest})" if rest else ""))
        if total > 3600:
            self.console.print(f"[yellow]This study would take about {human(total)} here.[/] To go faster: "
                               "--preset quick, a smaller model (e.g. test_resnet, resnet18 at 32 px), --device cuda, "
                               "or --stages to run only some stages.")

    def run_one(self, name: str):
        result = stages_api.run_stage(self.stage(name), self.path(name), self.ctx)
        if name == "capture":  # the study's parameters beside the capture's own config
            from . import store
            grp = store.open_group(self.run, mode="r+")
            store.set_provenance(grp, preset={"name": self.preset_name, **flat(self.identity["parameters"])})
        if name == "trajectory" and self.run.exists():  # the report reads the trajectory from the run store
            from . import store
            tree = store.open_run(result)
            grp = store.open_group(self.run, mode="r+")
            store.write_dataset(grp, store.TRAJECTORY, tree[store.TRAJECTORY].to_dataset().compute())
            store.consolidate(grp)  # the new node in the consolidated metadata plain xarray reads
        return result


def analyze(model: str, dataset: str, out: str | Path, checkpoint=None, preset: str = "quick", seeds=None,
            stages=None, device: str = "cpu", data_root=None, pretrained: bool | None = None,
            console: Console | None = None, progress: bool = True, estimate: bool = True,
            overrides: dict | None = None, loader_workers: int | None = None, scheduler=None,
            workers: int | None = None) -> dict:
    """Run the study; returns the report summary (dict). `overrides`: {stage: {parameter: value}} on top of the
    preset (the stages' parameters classes name every valid one)."""
    study = Study(model, dataset, out, checkpoint=checkpoint, preset=preset, seeds=seeds, device=device,
                  data_root=data_root, pretrained=pretrained, console=console, progress=progress,
                  overrides=overrides, loader_workers=loader_workers, scheduler=scheduler, workers=workers)
    todo = parse_stages(stages)
    study.check_order(todo)
    if any(not study.done(s) for s in todo if s != "report"):
        study.train_images()  # data first: a missing dataset is said before the folder is claimed or anything timed
    study.claim_folder()
    if estimate:
        study.estimate([s for s in todo if not study.done(s)])
    summary: dict = {}
    timings = {}
    for s in todo:
        why = study.skipped(s)
        if why:
            study.console.print(f"[dim]{s}: skipped ({why})[/]")
            continue
        if study.done(s):
            study.console.print(f"[dim]{s}: already done[/]")
            continue
        t0 = time.perf_counter()
        study.console.rule(f"[bold]{s}")
        result = study.run_one(s)
        timings[s] = time.perf_counter() - t0
        if isinstance(result, dict):
            summary = result
    if timings:
        study.console.print("stage times: " + ", ".join(f"{k} {human(v)}" for k, v in timings.items()))
    return summary


def flat(p: dict) -> dict:
    return {f"{stage}.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for stage, kv in p.items() for k, v in kv.items()}


def human(secs: float) -> str:
    """A duration for people (`chanaxis.progress.duration`: "under 1 s", "42 s", "7 min", "1.5 h")."""
    from .progress import duration
    return duration(secs)
