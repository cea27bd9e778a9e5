"""`chanaxis trajectory RUN_DIR`: the two axes at every checkpoint of a training run (METHOD §5)."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.common import add_run_options
    from chanaxis.cli.options import add_params
    from chanaxis.stages.trajectory import TrajectoryStage
    s = sub.add_parser("trajectory", help=TrajectoryStage.help)
    s.add_argument("run_dir", help="a `chanaxis train` run folder, or a folder of state dicts named with epoch "
                                   "numbers (epoch_3.pt, ckpt-0003.pth)")
    s.add_argument("--dataset", "-d", default=None, help="default: the training run's dataset")
    s.add_argument("--model", default=None, help="architecture of a folder of state dicts (timm name)")
    s.add_argument("--data-root", default=None, help="where the dataset lies (default: the training run's)")
    s.add_argument("--out", "-o", default=None, help="trajectory store (default: RUN_DIR/trajectory.zarr)")
    add_params(s, TrajectoryStage.Params)
    add_run_options(s)
    s.set_defaults(func=run)


def run(a) -> None:
    import numpy as np
    from rich.table import Table

    import chanaxis
    from chanaxis.cli.common import device, out
    from chanaxis.cli.options import given
    from chanaxis.stages.trajectory import TrajectoryStage
    path = chanaxis.trajectory(a.run_dir, dataset=a.dataset, out=a.out, model=a.model, device=device(a.device),
                               loader_workers=a.loader_workers, scheduler=a.scheduler, workers=a.workers,
                               progress=not a.quiet, root=a.data_root, **given(a, TrajectoryStage.Params))
    tr = chanaxis.open_run(path)["trajectory"].to_dataset().load()
    t = Table(title=f"trajectory ({path})")
    cols = ["epoch", "eval acc %", "calib acc %", "ρ(I_X, I(T;Y))", "I_X stab. ρ", "I(T;Y) stab. ρ"]
    if "grad_cos_mean" in tr:
        cols.append("grad_cos |cos|")
    for c in cols:
        t.add_column(c, justify="right", overflow="fold")

    def f(x, d=3):
        return "—" if not np.isfinite(x) else f"{x:.{d}f}"

    for i, e in enumerate(tr["checkpoint"].values):
        row = [str(int(e)), f(float(tr["eval_acc"][i]), 2), f(float(tr["calibration_acc"][i]), 2),
               f(float(tr["coupling_ix_it_mean"][i])) if "coupling_ix_it_mean" in tr else "—",
               f(float(tr["rank_stability_mean"].sel(metric="input_capture")[i])),
               f(float(tr["rank_stability_mean"].sel(metric="task_info")[i]))]
        if "grad_cos_mean" in tr:
            row.append(f(float(tr["grad_cos_mean"][i])))
        t.add_row(*row)
    out.print(t)
    out.print("ρ: within-layer Spearman, mean over layers; stab.: Spearman against the last checkpoint; "
              "grad_cos: layer mean |cos(Σ_X w, g_T)|")
