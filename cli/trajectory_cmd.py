"""`chanaxis trajectory`: the two axes at every checkpoint of a training run (METHOD §5)."""
from __future__ import annotations


def cmd_trajectory(a) -> None:
    import numpy as np
    from rich.table import Table

    import chanaxis
    from chanaxis.cli.main import _device, out
    from chanaxis.stages.trajectory import trajectory
    path = trajectory(a.run_dir, dataset=a.dataset, out=a.out, model=a.model, n_calibration=a.n_calibration,
                      spatial_samples=a.spatial_samples, seed=a.seed, split=a.split, root=a.data_root,
                      dtype=a.dtype, chunk_images=a.batch_size, grad_cos=not a.no_grad_cos,
                      geometry_images=a.geometry_images, device=_device(a.device), progress=not a.quiet)
    tr = chanaxis.open_run(path)["trajectory"].to_dataset().load()
    t = Table(title=f"trajectory ({path})")
    cols = ["epoch", "eval acc %", "calib acc %", "ρ(I_X, I(T;Y))", "I_X stab. ρ", "I(T;Y) stab. ρ"]
    if "grad_cos_mean" in tr:
        cols.append("grad_cos |cos|")
    for c in cols:
        t.add_column(c, justify="right")

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


def register(sub) -> None:
    s = sub.add_parser("trajectory", help="capture + metrics at every checkpoint of a training run, in one store")
    s.add_argument("run_dir", help="a `chanaxis train` run folder, or a folder of state dicts named with epoch "
                                   "numbers (epoch_3.pt, ckpt-0003.pth)")
    s.add_argument("--dataset", "-d", default=None, help="default: the training run's dataset")
    s.add_argument("--model", default=None, help="architecture of a folder of state dicts (timm name)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--out", "-o", default=None, help="trajectory store (default: RUN_DIR/trajectory.zarr)")
    s.add_argument("--split", default="train", help="split the calibration images come from")
    s.add_argument("--n-calibration", type=int, default=5000)
    s.add_argument("--spatial-samples", type=int, default=16)
    s.add_argument("--seed", type=int, default=0, help="calibration images and spatial positions")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--batch-size", type=int, default=128, help="images per capture batch")
    s.add_argument("--no-grad-cos", action="store_true", help="skip the gradient-geometry pass per checkpoint")
    s.add_argument("--geometry-images", type=int, default=1024, help="images for grad_cos")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_trajectory)
