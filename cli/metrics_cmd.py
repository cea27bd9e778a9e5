"""`chanaxis metrics RUN.zarr`: the two axes and the structure analyses."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.common import add_run_options
    from chanaxis.cli.options import add_params
    from chanaxis.stages.metrics import MetricsStage
    s = sub.add_parser("metrics", help=MetricsStage.help)
    s.add_argument("run", help="run store (RUN.zarr) written by `chanaxis capture`")
    add_params(s, MetricsStage.Params)
    add_run_options(s, overwrite="recompute metrics made with other parameters")
    s.set_defaults(func=run)


def run(a) -> None:
    from chanaxis.cli.common import device, out
    from chanaxis.cli.options import given
    from chanaxis.stages.metrics import MetricsStage, metrics
    from chanaxis.store import open_run
    metrics(a.run, scheduler=a.scheduler, workers=a.workers, progress=not a.quiet, device=device(a.device),
            loader_workers=a.loader_workers, overwrite=a.overwrite, **given(a, MetricsStage.Params))
    tree = open_run(a.run)
    m = tree["metrics"].to_dataset()
    msg = f"[green]metrics[/] for {m.sizes['unit']} channels in {len(set(m.layer.values))} layers written to {a.run}"
    if "structure" in tree.children:
        s = tree["structure"].to_dataset()
        if "task_info" in s.metric.values:
            r = float(s["spearman_mean"].sel(metric="input_capture", metric2="task_info"))
            msg += f" (layer-mean Spearman I_X vs I(T;Y) = {r:+.2f})"
    out.print(msg)
