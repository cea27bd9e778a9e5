"""The `chanaxis` command: parses, calls the library, prints with rich. No analysis logic here."""
from __future__ import annotations

import argparse
import sys
import warnings

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm model name (e.g. resnet18) or path to an .onnx file")
    p.add_argument("--dataset", "-d", required=True, help="data card name (chanaxis datasets) or an ImageFolder path")
    p.add_argument("--data-root", default=None, help="where the dataset lies (default: the card's search paths)")
    p.add_argument("--checkpoint", default=None, help="state dict (.pt/.pth/.safetensors) to load")
    p.add_argument("--num-classes", type=int, default=None, help="default: the data card's")
    p.add_argument("--image-size", type=int, default=None, help="default: the data card's")
    p.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (needs network)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def _open_model_and_data(a):
    import chanaxis
    from chanaxis.data import get_card
    card = get_card(a.dataset, image_size=a.image_size)
    size = a.image_size or card.image_size
    n_cls = a.num_classes or card.num_classes
    model = chanaxis.load_model(a.model, num_classes=n_cls, image_size=size, pretrained=a.pretrained,
                                checkpoint=a.checkpoint, device=_device(a.device))
    return model, size


def _device(name: str) -> str:
    if name.startswith("cuda"):
        import torch
        try:  # an ONNX model runs on onnxruntime-gpu even where torch has no CUDA
            import onnxruntime
            ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        except ImportError:
            ort_cuda = False
        if not torch.cuda.is_available() and not ort_cuda:
            from chanaxis.errors import ChanaxisError
            raise ChanaxisError("--device cuda was asked for but no CUDA GPU is available here; use --device cpu")
    elif name != "cpu":
        from chanaxis.errors import ChanaxisError
        raise ChanaxisError(f"unknown --device '{name}'; use cpu or cuda")
    return name


def cmd_models(a) -> None:
    from chanaxis.registry import adapters
    timm_adapter = adapters().get("timm")
    t = Table(title="models chanaxis opens")
    t.add_column("source")
    t.add_column("models")
    if timm_adapter is not None:
        from chanaxis.adapters.timm import FEATURED
        names = timm_adapter.list_models(a.pattern or "*")
        shown = names if a.pattern else list(FEATURED)
        t.add_row("timm", ", ".join(shown) + (f"  (+ {len(names) - len(shown)} more: chanaxis models 'res*')"
                                               if not a.pattern else f"  ({len(names)} matching)"))
    t.add_row("onnx", "any .onnx file with Conv layers (path ending in .onnx)" if "onnx" in adapters() else
              "(onnx adapter not available)")
    t.add_row("torch", "any torch.nn.Module through the Python API: chanaxis.load_model(module)")
    out.print(t)


def cmd_datasets(a) -> None:
    from chanaxis.data import availability, list_cards
    cards = {c.name: c for c in list_cards()}
    t = Table(title="datasets (data cards)")
    for col in ("name", "classes", "size (px)", "available", "where / how to get it"):
        t.add_column(col)
    for av in availability(a.data_root):
        c = cards[av.name]
        t.add_row(av.name, str(c.num_classes), str(c.image_size), "yes" if av.available else "no",
                  av.where if av.available else av.how_to_get)
    out.print(t)
    out.print("Any ImageFolder directory (root/<class>/*.jpg or root/train|val/<class>/*) also works as --dataset.")


def cmd_capture(a) -> None:
    import chanaxis
    model, size = _open_model_and_data(a)
    path = chanaxis.capture(model, a.dataset, a.out, split=a.split, root=a.data_root, n_calibration=a.n_calibration,
                            spatial_samples=a.spatial_samples, seed=a.seed, dtype=a.dtype,
                            chunk_images=a.batch_size, overwrite=a.overwrite, progress=not a.quiet)
    tree = chanaxis.open_run(path)
    n_layers = len(tree["layers"].children)
    n_img = tree["samples"].sizes["image"]
    acc = float(tree["samples"]["correct"].mean().compute()) * 100
    out.print(f"[green]captured[/] {n_img} images × {n_layers} layers into {path} "
              f"(calibration accuracy {acc:.1f} %, {tree['graph'].attrs['total_macs'] / 1e6:.1f} M MACs per image)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chanaxis", description="Two-axis channel analysis of convolutional networks.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list supported models")
    s.add_argument("pattern", nargs="?", default=None, help="wildcard filter, e.g. 'resnet*'")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("datasets", help="list data cards and whether each is available here")
    s.add_argument("--data-root", default=None)
    s.set_defaults(func=cmd_datasets)

    s = sub.add_parser("capture", help="stream channel activations on a calibration set into a run store")
    _add_model_args(s)
    s.add_argument("--out", "-o", required=True, help="run store path (RUN.zarr)")
    s.add_argument("--split", default="train")
    s.add_argument("--n-calibration", type=int, default=5000)
    s.add_argument("--spatial-samples", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--batch-size", type=int, default=128, help="images per batch (= per store chunk)")
    s.add_argument("--overwrite", action="store_true", help="replace a store made with another config")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_capture)

    # each later stage registers its own subcommand from its own module: register(subparsers)
    import importlib
    for mod in COMMAND_MODULES:
        importlib.import_module(f"chanaxis.cli.{mod}").register(sub)
    return p


COMMAND_MODULES: list[str] = ["metrics_cmd", "train_cmd", "trajectory_cmd", "lesion_cmd", "prune_cmd",
                              "analyze_cmd", "report_cmd"]


def main(argv=None) -> int:
    from chanaxis.errors import ChanaxisError
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            args.func(args)
    except ChanaxisError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
