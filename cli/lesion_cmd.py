"""`chanaxis lesion RUN.zarr`: single-channel lesions, peer replacement and which metric predicts damage."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.options import stage_command
    from chanaxis.interventions.lesion import LesionStage
    stage_command(sub, LesionStage, run, "run store (RUN.zarr) with /metrics (`chanaxis metrics RUN` first)",
                  overwrite="redo a /lesion made with other options")


def run(a) -> None:
    import numpy as np
    from rich.table import Table

    from chanaxis.cli.common import device, out
    from chanaxis.cli.options import given
    from chanaxis.interventions.lesion import LesionStage, lesion
    from chanaxis.store import open_run
    lesion(a.run, device=device(a.device), loader_workers=a.loader_workers, progress=not a.quiet, overwrite=a.overwrite,
           scheduler=a.scheduler, workers=a.workers,
           **given(a, LesionStage.Params))
    tree = open_run(a.run)
    ds = tree["lesion"].to_dataset()
    p = tree["lesion/predictors"].to_dataset().compute()
    d = ds["damage_loss"].values
    out.print(f"[green]lesioned[/] {d.size} channels of {len(p.layer)} layers into {a.run}: mean damage "
              f"{np.nanmean(d):.4f} nats, {np.nanmean(ds['damage_acc'].values):.2f} % accuracy "
              f"(base {ds.attrs['base_loss_nats']:.3f} nats, {ds.attrs['base_accuracy_pct']:.1f} %)")
    if "recovery" in ds:
        out.print(f"peer replacement: median recovery hull {np.nanmedian(ds['recovery'].values):.2f}, top-8 "
                  f"{np.nanmedian(ds['recovery_top8'].values):.2f}, mean-ablation "
                  f"{np.nanmedian(ds['recovery_mean_ablation'].values):.2f}, random peers "
                  f"{np.nanmedian(ds['recovery_random_peer'].values):.2f} (fraction of damage undone)")
    t = Table(title=f"Spearman(score, −damage): layer mean and within-bin pooled ({p.attrs['n_bins']} bins of "
                    "I(T;Y))")
    for c in ("metric", "layer mean ρ", "within-bin ρ"):
        t.add_column(c, overflow="fold")
    order = np.argsort(-np.nan_to_num(p["within_bin_pooled"].values, nan=-9))
    for i in order:
        t.add_row(str(p.metric.values[i]), f"{p['spearman_layer_mean'].values[i]:+.3f}",
                  f"{p['within_bin_pooled'].values[i]:+.3f}")
    out.print(t)
    r = p.sel(r2_scope="pooled")
    out.print(f"incremental R² of peer support over (I_X, I(T;Y)), pooled ranks: {float(r['delta_r2']):+.3f} "
              f"(R² {float(r['r2_base']):.3f} → {float(r['r2_full']):.3f}, p = {float(r['delta_r2_p']):.2g})")
