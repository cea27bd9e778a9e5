"""What the subcommands share: the consoles, the device check, the model/dataset options and the stage options."""
from __future__ import annotations

import argparse

from rich.console import Console

out = Console()
err = Console(stderr=True)


def device(name: str) -> str:
    """`name` if this machine can run it: cpu, or cuda[:N] where torch or onnxruntime sees a CUDA GPU."""
    from chanaxis.errors import ChanaxisError
    if name.startswith("cuda"):
        import torch
        try:  # an ONNX model runs on onnxruntime-gpu even where torch has no CUDA
            import onnxruntime
            ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        except ImportError:
            ort_cuda = False
        if not torch.cuda.is_available() and not ort_cuda:
            raise ChanaxisError("--device cuda was asked for but no CUDA GPU is available here; use --device cpu")
    elif name != "cpu":
        raise ChanaxisError(f"unknown --device '{name}'; use cpu or cuda")
    return name


def add_run_options(p: argparse.ArgumentParser, overwrite: str | None = None) -> None:
    """--device, --loader-workers, --workers, --scheduler, --quiet and (when the stage can redo its node)
    --overwrite."""
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda or cuda:N (default: cpu)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--loader-workers", type=int, default=None, metavar="N",
                   help="processes that read and decode images (0: in the main process; default: the usable cores, "
                        "or $CHANAXIS_LOADER_WORKERS); results do not depend on it")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the stage's units on a local dask cluster of N worker processes made for the run "
                        "(N >= 2; default: in this process); results equal the in-process run")
    p.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="run the stage's units on a running dask.distributed cluster (tcp://host:8786)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (results, warnings and errors still print)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm model name (e.g. resnet18) or path to an .onnx file")
    p.add_argument("--dataset", "-d", required=True, help="data card name (chanaxis datasets) or an ImageFolder path")
    p.add_argument("--data-root", default=None, help="where the dataset lies (default: the card's search paths)")
    p.add_argument("--checkpoint", default=None, help="state dict (.pt/.pth/.safetensors) to load")
    p.add_argument("--num-classes", type=int, default=None, help="output classes (default: the data card's)")
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the data card's)")
    p.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (needs network)")


def open_model(a):
    """The model named on the command line, sized for its dataset, on the asked device."""
    from chanaxis.reload import model_for_dataset
    return model_for_dataset(a.model, a.dataset, image_size=a.image_size, num_classes=a.num_classes,
                             pretrained=a.pretrained, checkpoint=a.checkpoint, device=device(a.device))
