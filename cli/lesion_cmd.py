"""`chanaxis lesion RUN.zarr`: single-channel lesions, peer replacement and which metric predicts damage."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("lesion", help="silence channels one at a time, replace them from their peers, and test "
                                      "which metric predicts the damage (METHOD §6)")
    s.add_argument("run", help="run store (RUN.zarr) with /metrics (`chanaxis metrics RUN` first)")
    s.add_argument("--all", action="store_true", help="lesion every channel (default: a seeded --fraction per layer)")
    s.add_argument("--fraction", type=float, default=0.2, help="share of each layer's channels lesioned (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the channel choice and random-peer control")
    s.add_argument("--eval-images", type=int, default=1000,
                   help="images of the evaluation split (seeded subset; default 1000, 0 = all)")
    s.add_argument("--batch-size", type=int, default=256, help="images × lesion variants per forward pass")
    s.add_argument("--no-replace", action="store_true", help="skip peer replacement and its controls")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--overwrite", action="store_true", help="redo a /lesion made with other options")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=run)


def run(a) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from chanaxis.cli.main import _device
    from chanaxis.interventions import lesion
    from chanaxis.store import open_run
    lesion(a.run, all_channels=a.all, fraction=a.fraction, seed=a.seed, eval_images=a.eval_images or None,
           batch_size=a.batch_size, replace=not a.no_replace, device=_device(a.device), progress=not a.quiet,
           overwrite=a.overwrite)
    tree = open_run(a.run)
    ds = tree["lesion"].to_dataset()
    p = tree["lesion/predictors"].to_dataset().compute()
    con = Console()
    d = ds["damage_loss"].values
    con.print(f"[green]lesioned[/] {d.size} channels of {len(p.layer)} layers into {a.run}: mean damage "
              f"{np.nanmean(d):.4f} nats, {np.nanmean(ds['damage_acc'].values):.2f} % accuracy "
              f"(base {ds.attrs['base_loss_nats']:.3f} nats, {ds.attrs['base_accuracy_pct']:.1f} %)")
    if "recovery" in ds:
        con.print(f"peer replacement: median recovery hull {np.nanmedian(ds['recovery'].values):.2f}, top-8 "
                  f"{np.nanmedian(ds['recovery_top8'].values):.2f}, mean-ablation "
                  f"{np.nanmedian(ds['recovery_mean_ablation'].values):.2f}, random peers "
                  f"{np.nanmedian(ds['recovery_random_peer'].values):.2f} (fraction of damage undone)")
    t = Table(title="Spearman(score, −damage): layer mean and within-bin pooled (5 bins of I(T;Y))")
    for c in ("metric", "layer mean ρ", "within-bin ρ"):
        t.add_column(c)
    order = np.argsort(-np.nan_to_num(p["within_bin_pooled"].values, nan=-9))
    for i in order:
        t.add_row(str(p.metric.values[i]), f"{p['spearman_layer_mean'].values[i]:+.3f}",
                  f"{p['within_bin_pooled'].values[i]:+.3f}")
    con.print(t)
    r = p.sel(r2_scope="pooled")
    con.print(f"incremental R² of peer support over (I_X, I(T;Y)), pooled ranks: {float(r['delta_r2']):+.3f} "
              f"(R² {float(r['r2_base']):.3f} → {float(r['r2_full']):.3f}, p = {float(r['delta_r2_p']):.2g})")
