"""`chanaxis prune RUN.zarr`: FLOPs-matched pruning of local-axis, target-axis and baseline scores."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.interventions.prune import LEVELS, SEEDS
    from chanaxis.interventions.scores import ALLOCATIONS, METHODS
    s = sub.add_parser("prune", help="prune at matched MACs with each score and compare the curves (METHOD §7)")
    s.add_argument("run", help="run store (RUN.zarr) with /metrics (`chanaxis metrics RUN` first)")
    s.add_argument("--methods", nargs="+", default=None, metavar="M",
                   help=f"scores to compare (default all): {', '.join(METHODS)}")
    s.add_argument("--allocation", default=None, metavar="A",
                   help=f"{' | '.join(ALLOCATIONS)} (default: global for ResNet/VGG, uniform for MobileNetV2/ConvNeXt)")
    s.add_argument("--levels", nargs="+", type=float, default=list(LEVELS), help="channel sparsities in (0, 1)")
    s.add_argument("--finetune-epochs", type=int, default=5, help="Adam epochs after pruning (0 = one-shot only)")
    s.add_argument("--finetune-batches", type=int, default=200, help="at most this many batches per epoch")
    s.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--eval-images", type=int, default=2000,
                   help="images of the evaluation split (seeded subset; default 2000, 0 = all)")
    s.add_argument("--taylor-images", type=int, default=1024, help="calibration images for the taylor score")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--overwrite", action="store_true", help="redo a /pruning made with other options")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=run)


def run(a) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from chanaxis.cli.main import _device
    from chanaxis.interventions import prune
    from chanaxis.store import open_run
    prune(a.run, methods=a.methods, allocation=a.allocation, levels=a.levels, finetune_epochs=a.finetune_epochs,
          finetune_batches=a.finetune_batches, seeds=a.seeds, eval_images=a.eval_images or None,
          batch_size=a.batch_size, lr=a.lr, taylor_images=a.taylor_images, device=_device(a.device),
          progress=not a.quiet, overwrite=a.overwrite)
    ds = open_run(a.run)["pruning"].to_dataset().compute()
    con = Console()
    for regime in ds.regime.values:
        auc = ds["auc"].sel(regime=regime)
        if not np.isfinite(auc.values).any():
            continue
        lo, hi = ds["auc_interval"].sel(regime=regime).values
        t = Table(title=f"{regime}: AUC = mean accuracy (%) over {100 * lo:.1f}–{100 * hi:.1f} % of MACs removed "
                        f"(base {float(ds['base_accuracy']):.1f} %, {ds.attrs['full_macs'] / 1e6:.1f} M MACs)")
        for c in ("method", "axis", "AUC (%)", "± s.d. over seeds"):
            t.add_column(c)
        for meth in ds.method.values[np.argsort(-ds["auc_mean"].sel(regime=regime).values)]:
            v = auc.sel({"method": meth}).values
            t.add_row(str(meth), str(ds.axis.sel({"method": meth}).values), f"{np.nanmean(v):.2f}",
                      f"{np.nanstd(v):.2f}")
        con.print(t)
        for c in ds.contrast.values:
            mean, lo_, hi_ = (float(ds[k].sel(regime=regime, contrast=c)) for k in
                              ("contrast_mean", "contrast_ci_low", "contrast_ci_high"))
            if np.isfinite(mean):
                con.print(f"  {c}: {mean:+.2f} AUC points (95% CI {lo_:+.2f} … {hi_:+.2f})")
