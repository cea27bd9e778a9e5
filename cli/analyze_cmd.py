"""`chanaxis analyze MODEL --dataset D`: the whole study in one command."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("analyze", help="run the whole study: train, capture, metrics, trajectory, lesions, "
                                       "pruning, report")
    s.add_argument("model", help="timm model name, or path to an .onnx file (then --checkpoint is not used)")
    s.add_argument("--dataset", "-d", required=True, help="data card name (chanaxis datasets) or ImageFolder path")
    s.add_argument("--checkpoint", default=None, help="a trained state dict: skips training (and the trajectory)")
    s.add_argument("--preset", default="quick", help="quick (CPU-sized) or paper (METHOD.md's protocol)")
    s.add_argument("--seeds", default=None, help="pruning seeds, comma list (default: the preset's)")
    s.add_argument("--stages", default=None, help="comma list of stages to run (default: all, in order)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--data-root", default=None)
    s.add_argument("--pretrained", action="store_true", help="start training from timm's pretrained weights")
    s.add_argument("--out", "-o", default=None, help="study folder (default: runs/<model>-<dataset>-<preset>)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=run)


def run(a) -> None:
    from pathlib import Path

    from chanaxis.cli.main import _device
    from chanaxis.stages.analyze import analyze
    out = a.out or str(Path("runs") / f"{Path(a.model).stem}-{Path(a.dataset).name}-{a.preset}")
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    analyze(a.model, a.dataset, out, checkpoint=a.checkpoint, preset=a.preset, seeds=seeds, stages=a.stages,
            device=_device(a.device), data_root=a.data_root, pretrained=a.pretrained, progress=not a.quiet)
