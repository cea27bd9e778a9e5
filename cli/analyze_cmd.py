"""`chanaxis analyze MODEL --dataset D`: the whole study in one command."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.common import add_run_options
    from chanaxis.study import PRESETS
    s = sub.add_parser("analyze", help="run the whole study: train, capture, metrics, trajectory, lesions, "
                                       "pruning, report")
    s.add_argument("model", help="timm model name, or path to an .onnx file (then --checkpoint is not used)")
    s.add_argument("--dataset", "-d", required=True, help="data card name (chanaxis datasets) or ImageFolder path")
    s.add_argument("--checkpoint", default=None, help="a trained state dict: skips training (and the trajectory)")
    s.add_argument("--preset", default="quick", choices=PRESETS,
                   help="quick (CPU-sized) or paper (METHOD.md's protocol) (default: quick)")
    s.add_argument("--set", dest="settings", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                   help="override one parameter of one stage on top of the preset, e.g. --set prune.levels=0.1,0.5 "
                        "(repeatable; `chanaxis STAGE --help` lists each stage's parameters)")
    s.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16"),
                   help="training and fine-tuning precision: bf16 autocast with channels_last, or fp32 (default: auto, "
                        "bf16 on CUDA and fp32 elsewhere); the passes that feed the metrics stay fp32 (--set "
                        "capture.precision=bf16 etc. to change them)")
    s.add_argument("--seeds", default=None, help="pruning seeds, comma list (default: the preset's)")
    from chanaxis.stage import targets
    s.add_argument("--stages", default=None, metavar="STAGE,…",
                   help=f"comma list of stages to run, each one of: {', '.join(targets())} (default: all, in order)")
    s.add_argument("--data-root", default=None, help="where the dataset lies (default: the card's search paths)")
    s.add_argument("--pretrained", action="store_true", help="start training from timm's pretrained weights")
    s.add_argument("--out", "-o", default=None, help="study folder (default: runs/<model>-<dataset>-<preset>)")
    add_run_options(s)
    s.set_defaults(func=run)


def precision_settings(precision: str | None, settings: dict) -> dict:
    """--precision P as train.precision=P and prune.finetune_precision=P (an explicit --set wins)."""
    if precision is not None:
        settings.setdefault("train", {}).setdefault("precision", precision)
        settings.setdefault("prune", {}).setdefault("finetune_precision", precision)
    return settings


def parse_settings(items: list[str]) -> dict:
    """["prune.levels=0.1,0.5", …] → {"prune": {"levels": "0.1,0.5"}}; each stage's parameters class checks them."""
    from chanaxis.errors import ChanaxisError
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or not stage or not name:
            raise ChanaxisError(f"--set {item!r} is not STAGE.PARAM=VALUE (e.g. --set lesion.fraction=0.1)")
        value = value.strip()
        out.setdefault(stage, {})[name] = None if value.lower() == "none" else value
    return out


def run(a) -> None:
    from pathlib import Path

    from chanaxis.cli.common import device
    from chanaxis.study import analyze
    out = a.out or str(Path("runs") / f"{Path(a.model).stem}-{Path(a.dataset).name}-{a.preset}")
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    analyze(a.model, a.dataset, out, checkpoint=a.checkpoint, preset=a.preset, seeds=seeds, stages=a.stages,
            device=device(a.device), data_root=a.data_root, pretrained=a.pretrained, progress=not a.quiet,
            loader_workers=a.loader_workers, scheduler=a.scheduler, workers=a.workers,
            overrides=precision_settings(a.precision, parse_settings(a.settings)))
