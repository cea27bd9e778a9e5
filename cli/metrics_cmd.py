"""`chanaxis metrics RUN.zarr`: the two axes and the structure analyses."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("metrics", help="compute the local/target channel metrics and structure analyses of a run")
    s.add_argument("run", help="run store (RUN.zarr) written by `chanaxis capture`")
    s.add_argument("--only", default="local,target,structure", help="comma list of local,target,structure")
    s.add_argument("--workers", type=int, default=None, help="threads for the chunked reductions (1 = serial)")
    s.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (tcp://host:8786)")
    s.add_argument("--n-null", type=int, default=None, help="rewired-null graphs per modularity (default 5)")
    s.add_argument("--seed", type=int, default=None, help="seed of k-means, nulls and triplet sampling (default 0)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=run)


def run(a) -> None:
    from rich.console import Console

    from chanaxis.stages.metrics import metrics
    from chanaxis.store import open_run
    params = {k: v for k, v in (("n_null", a.n_null), ("seed", a.seed)) if v is not None}
    metrics(a.run, only=[s.strip() for s in a.only.split(",") if s.strip()], scheduler=a.scheduler,
            workers=a.workers, progress=not a.quiet, **params)
    tree = open_run(a.run)
    m = tree["metrics"].to_dataset()
    msg = f"[green]metrics[/] for {m.sizes['unit']} channels in {len(set(m.layer.values))} layers written to {a.run}"
    if "structure" in tree.children:
        s = tree["structure"].to_dataset()
        if "task_info" in s.metric.values:
            r = float(s["spearman_mean"].sel(metric="input_capture", metric2="task_info"))
            msg += f" (layer-mean Spearman I_X vs I(T;Y) = {r:+.2f})"
    Console().print(msg)
