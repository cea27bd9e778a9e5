"""`chanaxis analyze`: the whole study of the paper on one model and dataset, stage by stage, resumable.

A study folder holds `study.json` (what study this is), `train/` (checkpoints, when trained here), `run.zarr` (the
trained model's capture, metrics, lesions, pruning, and a copy of the trajectory), `trajectory.zarr`, the figures
and the JSON summary. Every stage records completion, so rerunning continues where it stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import ChanaxisError

STAGES = ("train", "capture", "metrics", "trajectory", "lesion", "prune", "report")

# quick: a CPU-sized study that still means something (a well-trained small model, short fine-tunes, fewer
# methods and levels); paper: METHOD.md's protocol. Every value is recorded in the store's attrs.
PRESETS: dict[str, dict] = {
    "quick": {
        "train": {"epochs": 5, "checkpoints": "0,1,3,5", "train_subset": 12000, "eval_subset": 2000},
        "capture": {"n_calibration": 1000, "spatial_samples": 16},
        "metrics": {"n_null": 2, "n_perm": 100, "n_triplets": 1000, "geometry_images": 512},
        "trajectory": {"n_calibration": 400},
        "lesion": {"fraction": 0.2, "eval_images": 400},
        "prune": {"methods": ["input_capture", "hull", "task_info", "composite_target", "magnitude", "random"],
                  "levels": [0.1, 0.2, 0.35, 0.5], "finetune_epochs": 1, "finetune_batches": 40,
                  "seeds": [42, 123], "eval_images": 500, "n_resamples": 10000},
    },
    "paper": {
        "train": {"epochs": None, "checkpoints": None, "train_subset": None, "eval_subset": None},
        "capture": {"n_calibration": 5000, "spatial_samples": 16},
        "metrics": {},
        "trajectory": {"n_calibration": 5000},
        "lesion": {"fraction": 0.2, "eval_images": None},
        "prune": {"methods": None, "levels": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                  "finetune_epochs": 5, "finetune_batches": 200, "seeds": [42, 123, 456, 789, 1011],
                  "eval_images": None, "n_resamples": 10000},
    },
}
NEEDS = {"capture": ("train",), "metrics": ("capture",), "trajectory": ("train",), "lesion": ("metrics",),
         "prune": ("metrics",), "report": ("metrics",)}


def resolve_store(path: str | Path) -> Path:
    """A run store path, or a study folder (→ its run.zarr)."""
    p = Path(path)
    if (p / "study.json").is_file():
        return p / "run.zarr"
    return p


def _parse_stages(stages) -> list[str]:
    if stages is None:
        return list(STAGES)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ChanaxisError(f"unknown stage '{bad[0]}'; stages are, in order: {', '.join(STAGES)}")
    return [s for s in STAGES if s in stages]


class Study:
    def __init__(self, model: str, dataset: str, out: str | Path, checkpoint=None, preset: str = "quick",
                 seeds=None, device: str = "cpu", data_root=None, pretrained: bool | None = None,
                 console: Console | None = None, progress: bool = True, overrides: dict | None = None):
        if preset not in PRESETS:
            raise ChanaxisError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        self.model_spec, self.dataset, self.out = model, dataset, Path(out)
        self.checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None
        self.preset_name, self.device, self.data_root = preset, device, data_root
        self.pretrained = pretrained
        self.console = console or Console()
        self.progress = progress
        self.p = json.loads(json.dumps(PRESETS[preset]))
        for stage, kv in (overrides or {}).items():
            self.p.setdefault(stage, {}).update(kv)
        if seeds:
            self.p["prune"]["seeds"] = list(seeds)
        self.identity = {"model": model, "dataset": dataset, "checkpoint": self.checkpoint, "preset": preset,
                         "parameters": self.p}
        self.run = self.out / "run.zarr"
        self.train_dir = self.out / "train"
        self.traj = self.out / "trajectory.zarr"

    # -------------------------------------------------------------- identity and bookkeeping
    def claim_folder(self) -> None:
        f = self.out / "study.json"
        if f.is_file():
            old = json.loads(f.read_text())
            if old != self.identity:
                diff = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
                raise ChanaxisError(f"'{self.out}' holds a different study (differs in: {', '.join(diff)}); "
                                    "choose another --out or rerun with the same options")
        elif self.out.exists() and any(self.out.iterdir()):
            raise ChanaxisError(f"'{self.out}' is not empty and holds no chanaxis study; choose another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(self.identity, indent=2))
        except OSError as e:
            raise ChanaxisError(f"cannot write the study folder '{self.out}' ({e.strerror}); choose another --out"
                                ) from None

    def done(self, stage: str) -> bool:
        from .. import store
        if stage == "train":
            if self.checkpoint:
                return True
            try:
                from ..training import read_manifest
                return read_manifest(self.train_dir).get("status") == "done"
            except ChanaxisError:
                return False
        if stage == "trajectory":
            return self.traj.exists() and store.status(self.traj).get("trajectory") == "done"
        if stage == "report":
            return False
        if not self.run.exists():
            return False
        key = {"prune": "pruning"}.get(stage, stage)
        return store.status(self.run).get(key) == "done"

    def check_order(self, stages: list[str]) -> None:
        for s in stages:
            for need in NEEDS.get(s, ()):
                if need not in stages and not self.done(need):
                    raise ChanaxisError(f"stage '{s}' needs '{need}', which has not run in '{self.out}'; "
                                        f"include it: --stages {','.join(_parse_stages([need, *stages]))}")

    def trained_checkpoint(self) -> str:
        if self.checkpoint:
            return self.checkpoint
        from ..training import read_manifest
        best = (read_manifest(self.train_dir).get("best") or {}).get("path")
        if not best:
            raise ChanaxisError(f"the training run in '{self.train_dir}' has no best checkpoint; rerun the "
                                "train stage (--stages train)")
        return str(self.train_dir / best)

    def card(self):
        from ..data import get_card
        return get_card(self.dataset)

    def load_model(self, checkpoint=None, init_seed: int = 0):
        from ..registry import load_model
        card = self.card()
        return load_model(self.model_spec, num_classes=card.num_classes, image_size=card.image_size,
                          checkpoint=checkpoint, init_seed=init_seed, device=self.device)

    # -------------------------------------------------------------- estimates
    def estimate(self, stages: list[str]) -> None:
        """Time one batch forward and forward+backward, extrapolate every stage, print the table."""
        from .estimate import estimate_stages
        rows, total = estimate_stages(self, stages)
        t = Table(title=f"estimated duration ({self.preset_name} preset, {self.device}, measured on one batch)")
        t.add_column("stage")
        t.add_column("work")
        t.add_column("estimate", justify="right")
        for stage, work, secs in rows:
            t.add_row(stage, work, _human(secs))
        t.add_row("[bold]total", "", f"[bold]{_human(total)}")
        self.console.print(t)
        if total > 3600:
            self.console.print(f"[yellow]This study would take about {_human(total)} here.[/] To go faster: "
                               "--preset quick, a smaller model (e.g. test_resnet, resnet18 at 32 px), --device cuda, "
                               "or --stages to run only some stages.")

    # -------------------------------------------------------------- stages
    def stage_train(self) -> None:
        from ..training import train
        t = self.p["train"]
        pretrained = bool(self.pretrained)
        train(self.model_spec, self.dataset, self.train_dir, epochs=t["epochs"], checkpoints=t["checkpoints"],
              seed=0, pretrained=pretrained, device=self.device, train_subset=t["train_subset"],
              eval_subset=t.get("eval_subset"), root=self.data_root, progress=self.progress)

    def stage_capture(self) -> None:
        from .capture import capture
        model = self.load_model(self.trained_checkpoint())
        c = self.p["capture"]
        capture(model, self.dataset, self.run, root=self.data_root, n_calibration=c["n_calibration"],
                spatial_samples=c["spatial_samples"], progress=self.progress,
                extra_config={"study": str(self.out)})
        from .. import store
        store.open_group(self.run, mode="r+").attrs["preset"] = {"name": self.preset_name, **_flat(self.p)}

    def stage_metrics(self) -> None:
        from .metrics import metrics
        metrics(self.run, progress=self.progress, **self.p["metrics"])

    def stage_trajectory(self) -> None:
        if self.checkpoint:
            self.console.print("trajectory: skipped (a trained checkpoint was given; no training checkpoints)")
            return
        from .. import store
        from .trajectory import trajectory
        tr = self.p["trajectory"]
        path = trajectory(self.train_dir, self.dataset, out=self.traj, n_calibration=tr["n_calibration"],
                          root=self.data_root, device=self.device, progress=self.progress,
                          metrics_params={k: v for k, v in self.p["metrics"].items() if k != "geometry_images"})
        tree = store.open_run(path)
        grp = store.open_group(self.run, mode="r+")
        store.write_dataset(grp, "trajectory", tree["trajectory"].to_dataset().compute())

    def stage_lesion(self) -> None:
        from ..interventions.lesion import lesion
        le = self.p["lesion"]
        lesion(self.run, fraction=le["fraction"], eval_images=le["eval_images"], device=self.device,
               progress=self.progress)

    def stage_prune(self) -> None:
        from ..interventions.prune import prune
        pr = dict(self.p["prune"])
        prune(self.run, **{k: v for k, v in pr.items() if v is not None}, device=self.device, progress=self.progress)

    def stage_report(self) -> dict:
        from ..report import report
        return report(self.run, console=self.console)


def analyze(model: str, dataset: str, out: str | Path, checkpoint=None, preset: str = "quick", seeds=None,
            stages=None, device: str = "cpu", data_root=None, pretrained: bool | None = None,
            console: Console | None = None, progress: bool = True, estimate: bool = True,
            overrides: dict | None = None) -> dict:
    """Run the study; returns the report summary (dict)."""
    study = Study(model, dataset, out, checkpoint=checkpoint, preset=preset, seeds=seeds, device=device,
                  data_root=data_root, pretrained=pretrained, console=console, progress=progress,
                  overrides=overrides)
    todo = _parse_stages(stages)
    study.claim_folder()
    study.check_order(todo)
    if estimate:
        study.estimate([s for s in todo if not study.done(s)])
    summary: dict = {}
    timings = {}
    for s in todo:
        if s != "report" and study.done(s):
            study.console.print(f"[dim]{s}: already done[/]")
            continue
        t0 = time.perf_counter()
        study.console.rule(f"[bold]{s}")
        result = getattr(study, f"stage_{s}")()
        timings[s] = time.perf_counter() - t0
        if s == "report":
            summary = result
    if timings:
        study.console.print("stage times: " + ", ".join(f"{k} {_human(v)}" for k, v in timings.items()))
    return summary


def _flat(p: dict) -> dict:
    return {f"{stage}.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for stage, kv in p.items() for k, v in kv.items()}


def _human(secs: float) -> str:
    if secs < 90:
        return f"{secs:.0f} s"
    if secs < 5400:
        return f"{secs / 60:.0f} min"
    if secs < 3 * 86400:
        return f"{secs / 3600:.1f} h"
    return f"{secs / 86400:.1f} days"
