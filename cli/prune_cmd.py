"""`chanaxis prune RUN.zarr`: FLOPs-matched pruning of local-axis, target-axis and baseline scores."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.options import stage_command
    from chanaxis.interventions.prune import PruneStage
    stage_command(sub, PruneStage, run, "run store (RUN.zarr) with /metrics (`chanaxis metrics RUN` first)",
                  overwrite="redo a /pruning made with other options")


def run(a) -> None:
    import numpy as np
    from rich.table import Table

    from chanaxis.cli.common import device, out
    from chanaxis.cli.options import given
    from chanaxis.interventions.prune import PruneStage, no_common_interval, prune
    from chanaxis.store import open_run
    prune(a.run, device=device(a.device), loader_workers=a.loader_workers, progress=not a.quiet, overwrite=a.overwrite,
          scheduler=a.scheduler, workers=a.workers,
          **given(a, PruneStage.Params))
    ds = open_run(a.run)["pruning"].to_dataset().compute()
    apart = [str(r) for r in ds.regime.values if no_common_interval(ds, r)]
    if apart:
        out.print(f"{' and '.join(apart)}: the methods' curves share no common MACs-reduction interval, so no AUC "
                  "is compared; pass more or higher --levels so that every method covers a common range")
    for regime in ds.regime.values:
        if str(regime) in apart:
            continue
        auc = ds["auc"].sel(regime=regime)
        if not np.isfinite(auc.values).any():
            continue
        lo, hi = ds["auc_interval"].sel(regime=regime).values
        t = Table(title=f"{regime}: AUC = mean accuracy (%) over {100 * lo:.1f}–{100 * hi:.1f} % of MACs removed "
                        f"(base {float(ds['base_accuracy']):.1f} %, {ds.attrs['full_macs'] / 1e6:.1f} M MACs)")
        for c in ("method", "axis", "AUC (%)", "± s.d. over seeds"):
            t.add_column(c, overflow="fold")
        for meth in ds.method.values[np.argsort(-ds["auc_mean"].sel(regime=regime).values)]:
            v = auc.sel({"method": meth}).values
            t.add_row(str(meth), str(ds.axis.sel({"method": meth}).values), f"{np.nanmean(v):.2f}",
                      f"{np.nanstd(v):.2f}")
        out.print(t)
        for c in ds.contrast.values:
            mean, lo_, hi_ = (float(ds[k].sel(regime=regime, contrast=c)) for k in
                              ("contrast_mean", "contrast_ci_low", "contrast_ci_high"))
            if not np.isfinite(mean):
                continue
            if np.isfinite(lo_) and np.isfinite(hi_):
                out.print(f"  {c}: {mean:+.2f} AUC points (95% CI {lo_:+.2f} … {hi_:+.2f})")
            else:  # no interval: say why (never a zero-width one printed as a CI)
                why = str(ds["contrast_resamples"].sel(regime=regime, contrast=c).values) \
                    if "contrast_resamples" in ds else "no interval"
                out.print(f"  {c}: {mean:+.2f} AUC points (no interval: {why})")
        if "contrast_interval" in ds.attrs:
            out.print(f"  intervals: {ds.attrs['contrast_interval']}")
