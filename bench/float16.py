"""The float16 store's effect on every metric: the same model and images captured into a float32 and a float16 store,
`chanaxis.metrics` run on both, and every variable of /metrics and /structure compared.

    .venv/bin/python bench/float16.py [--model resnet18] [--images 1000] [--train-steps 30]

Fashion-MNIST at 32 px; the model is seeded random init, briefly trained (`--train-steps` Adam steps of 64 training
images, lr 1e-3; 0 keeps the random init) so that its target metrics mean something. Both captures use the same
calibration indices and spatial positions; only the storage dtype of the sampled C-vectors differs (the per-image
means, margins and logits are float32 in both). The metrics stage runs with its defaults on both stores (same seeds).

Printed per variable: the largest absolute deviation float16 − float32 in the variable's units, next to the largest
|value| (its scale); for the per-channel metrics also the Spearman ρ between the two rankings (pooled over all
channels, and the lowest within-layer ρ), since the paper reads them as within-layer ranks; for integer outputs the
share of entries that differ (k-means groups: the adjusted Rand index of the two partitions, as labels may permute).
`grad_cos` comes from its own forward pass on the model (not from the store), so it cannot differ; the modularity
nulls (`q_*_null_*`) are rewirings of the thresholded graphs, so any changed edge gives another random null (their
deviation is of the order of the null's own s.d.).
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def train_briefly(model, steps: int, seed: int = 0, batch: int = 64) -> None:
    """`steps` Adam steps (lr 1e-3) on random Fashion-MNIST training batches, in place; the module left in eval."""
    import chanaxis
    from chanaxis.data.loader import Loader
    if steps <= 0:
        return
    handle = chanaxis.load_dataset("fashion-mnist", split="train")
    idx = np.random.default_rng(seed).choice(len(handle.dataset), steps * batch, replace=False)
    loader = Loader(handle.dataset, workers=0)
    module = model.module
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    for x, y in loader.batches(idx, batch):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt.step()
    module.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def max_dev(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(largest |a − b| where both are finite, entries finite in one and not the other)."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    dev = float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0
    return dev, int((fa != fb).sum())


def fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else ("0" if x == 0 else f"{x:.3g}")


def compare_samples(p32: str, p16: str) -> None:
    """The stored C-vectors themselves: largest deviation, absolute and relative to the layer's largest |value|."""
    from chanaxis import store
    g32, g16 = store.open_group(p32), store.open_group(p16)
    worst_abs, worst_rel = (0.0, ""), (0.0, "")
    for l in store.run_config(g32)["layers"]:
        a = np.asarray(g32[store.layer_array(l, "local")][...], np.float64)
        b = np.asarray(g16[store.layer_array(l, "local")][...], np.float64)
        d = float(np.abs(a - b).max())
        rel = d / max(float(np.abs(a).max()), 1e-30)
        worst_abs = max(worst_abs, (d, l))
        worst_rel = max(worst_rel, (rel, l))
    print(f"stored samples (`local`): largest |Δ| {fmt(worst_abs[0])} activation (layer {worst_abs[1]}); largest "
          f"|Δ| ÷ layer's max |value| {fmt(worst_rel[0])} (layer {worst_rel[1]}; float16 keeps 11 significant bits, "
          "2^-11 = 4.9e-4 relative)")


def compare_metrics(p32: str, p16: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    import chanaxis
    t32, t16 = chanaxis.open_run(p32), chanaxis.open_run(p16)
    m32, m16 = t32["metrics"].to_dataset().load(), t16["metrics"].to_dataset().load()
    layers = np.array([str(v) for v in m32["layer"].values])
    assert np.array_equal(layers, np.array([str(v) for v in m16["layer"].values]))
    names = list(dict.fromkeys(layers))
    print(f"\n/metrics ({len(layers)} channels in {len(names)} layers): float16 − float32")
    print(f"  {'variable':16s} {'units':16s} {'max |Δ|':>10s} {'max |value|':>12s} {'ρ pooled':>9s} "
          f"{'min ρ layer':>12s}  notes")
    for k in sorted(m32.data_vars):
        a, b = np.asarray(m32[k].values), np.asarray(m16[k].values)
        units = str(m32[k].attrs.get("units", ""))
        if a.dtype.kind == "f":
            dev, nonfin = max_dev(a, b)
            scale = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else float("nan")
            rho = spearman(a, b)
            per = [spearman(a[layers == l], b[layers == l]) for l in names]
            per = [r for r in per if np.isfinite(r)]
            note = f"{nonfin} entries finite in one store only" if nonfin else ""
            print(f"  {k:16s} {units:16s} {fmt(dev):>10s} {fmt(scale):>12s} {rho:9.6f} "
                  f"{min(per) if per else float('nan'):12.6f}  {note}")
        elif k.startswith("cluster_"):
            aris = [adjusted_rand_score(a[layers == l], b[layers == l]) for l in names]
            print(f"  {k:16s} {'group':16s} {'':>10s} {'':>12s} {'':>9s} {'':>12s}  ARI float16 vs float32: "
                  f"min {min(aris):.3f}, mean {np.mean(aris):.3f} over layers; labels differ for "
                  f"{(a != b).mean():.1%} of channels ({int((a != b).sum())})")
        else:
            diff = (a != b).any(axis=tuple(range(1, a.ndim))) if a.ndim > 1 else (a != b)
            extra = ""
            if a.dtype.kind in "iu" and a.ndim == 1:
                extra = f", max |Δ| {int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())} {units}"
            print(f"  {k:16s} {units:16s} {'':>10s} {'':>12s} {'':>9s} {'':>12s}  differs for {diff.mean():.1%} of "
                  f"channels ({int(diff.sum())}){extra}")
    s32, s16 = t32["structure"].to_dataset().load(), t16["structure"].to_dataset().load()
    print("\n/structure: float16 − float32")
    print(f"  {'variable':22s} {'units':10s} {'dims':28s} {'max |Δ|':>10s} {'max |value|':>12s}")
    for k in sorted(s32.data_vars):
        a, b = np.asarray(s32[k].values, np.float64), np.asarray(s16[k].values, np.float64)
        dev, nonfin = max_dev(a, b)
        scale = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else float("nan")
        print(f"  {k:22s} {s32[k].attrs.get('units', '')!s:10s} {s32[k].dims!s:28s} {fmt(dev):>10s} "
              f"{fmt(scale):>12s}" + (f"  ({nonfin} entries finite in one store only)" if nonfin else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--images", type=int, default=1000, help="calibration images (default 1000)")
    ap.add_argument("--train-steps", type=int, default=30, help="brief training first (0: random init)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the two stores are written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the stores (printed paths)")
    a = ap.parse_args()
    import chanaxis
    torch.set_num_threads(a.threads)
    t = {"model load + train": time.perf_counter()}
    model = chanaxis.load_model(a.model, num_classes=10, image_size=32)
    train_briefly(model, a.train_steps)
    t["model load + train"] = time.perf_counter() - t["model load + train"]
    # --keep: a folder of its own, left in place (the stores' paths printed); else a temporary one, removed at the end
    folder = contextlib.nullcontext(tempfile.mkdtemp(dir=a.dir)) if a.keep else tempfile.TemporaryDirectory(dir=a.dir)
    with folder as tmp:
        paths = {}
        for dtype in ("float32", "float16"):
            t0 = time.perf_counter()
            paths[dtype] = chanaxis.capture(model, "fashion-mnist", Path(tmp) / f"{dtype}.zarr",
                                            n_calibration=a.images, dtype=dtype, progress=False)
            t1 = time.perf_counter()
            chanaxis.metrics(paths[dtype], model=model, progress=False)
            t[f"capture {dtype}"], t[f"metrics {dtype}"] = t1 - t0, time.perf_counter() - t1
        acc = float(np.asarray(chanaxis.open_run(paths["float32"])["samples"]["correct"].values).mean())
        print(f"{a.model} at 32 px, {'seeded random init' if a.train_steps <= 0 else f'{a.train_steps} Adam steps'} "
              f"(calibration accuracy {acc:.1%}), {a.images} Fashion-MNIST training images, metrics stage defaults; "
              f"seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()))
        compare_samples(paths["float32"], paths["float16"])
        compare_metrics(paths["float32"], paths["float16"])
        if a.keep:
            print(f"stores kept: {paths['float32']}, {paths['float16']}")


if __name__ == "__main__":
    main()
