"""`chanaxis capture MODEL --dataset D --out RUN.zarr`: stream channel activations into a run store."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.common import add_model_args, add_run_options
    from chanaxis.cli.options import add_params
    from chanaxis.stages.capture import CaptureStage
    s = sub.add_parser("capture", help=CaptureStage.help)
    add_model_args(s)
    s.add_argument("--out", "-o", required=True, help="run store path (RUN.zarr)")
    add_params(s, CaptureStage.Params)
    add_run_options(s, overwrite="replace a chanaxis store made with another config")
    s.set_defaults(func=run)


def run(a) -> None:
    import chanaxis
    from chanaxis.cli.common import open_model, out
    from chanaxis.cli.options import given
    from chanaxis.stages.capture import CaptureStage
    model = open_model(a)
    path = chanaxis.capture(model, a.dataset, a.out, data_root=a.data_root, overwrite=a.overwrite,
                            loader_workers=a.loader_workers, scheduler=a.scheduler, workers=a.workers,
                            progress=not a.quiet, **given(a, CaptureStage.Params))
    tree = chanaxis.open_run(path)
    n_layers = len(tree["layers"].children)
    n_img = tree["samples"].sizes["image"]
    acc = float(tree["samples"]["correct"].mean().compute()) * 100
    out.print(f"[green]captured[/] {n_img} images × {n_layers} layers into {path} "
              f"(calibration accuracy {acc:.1f} %, {tree['graph'].attrs['total_macs'] / 1e6:.1f} M MACs per image)")
