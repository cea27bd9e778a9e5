"""PNG figures beside the store, for what a person would rather look at than read."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..locations import location  # noqa: E402
from ..store import open_run  # noqa: E402


def save_figure(fig, out: Path, tight: bool = True) -> Path:
    if tight:  # False: the caller placed colorbars or legends by hand
        fig.tight_layout()
    with out.open("wb") as f:  # a local file or an object at a URL alike
        fig.savefig(f, format=out.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return out

def figure_dir(run: str | Path, where: str | Path | None = None) -> Path:
    """`<where>/<run>_figures` (default beside the store)."""
    run = location(run)
    d = location(where or run.parent) / f"{run.stem}_figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def plane(m, out: Path, max_layers: int = 16) -> Path:
    """The two-axis plane: I_X against I(T;Y), one panel per layer."""
    names = m.chanaxis.layers()
    if len(names) > max_layers:  # evenly spaced depths keep the figure readable
        names = [names[int(round(k))] for k in np.linspace(0, len(names) - 1, max_layers)]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    ix, it, layer = m["input_capture"].values, m["task_info"].values, m["layer"].values
    for ax, name in zip(axes.flat, names):
        sel = layer == name
        ax.scatter(ix[sel], it[sel], s=6, alpha=0.6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("I_X (nats)", fontsize=7)
        ax.set_ylabel("I(T;Y) (nats)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("two-axis plane: input capture vs task information, per layer")
    return save_figure(fig, out)


def spearman_matrix(s, out: Path) -> Path:
    mat = s["spearman_mean"].values
    names = [str(x) for x in s["metric"].values]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, label="Spearman ρ (layer mean)")
    ax.set_title("alignment of channel metrics (within layers)")
    return save_figure(fig, out)


def method_curve(p, var: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The pruning node `p`'s curve of method number `i` in regime `var` (acc_oneshot / acc_finetuned), mean over
    seeds: MACs retained (%) from 100 down and accuracy (%) from the unpruned model's."""
    # by position: `.sel(method=...)` would be taken as sel's own `method=` (inexact matching) argument
    a, mr = p[var].isel({"method": i}), p["macs_retained_pct"].isel({"method": i})
    a = a.mean("seed") if "seed" in a.dims else a
    mr = mr.mean("seed") if "seed" in mr.dims else mr
    order = np.argsort(-mr.values)
    return np.r_[100.0, mr.values[order]], np.r_[float(p["base_accuracy"]), a.values[order]]


def pruning_curves(p, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, var in zip(axes.flat, ("acc_oneshot", "acc_finetuned")):
        if var not in p:
            ax.axis("off")
            continue
        for i, method in enumerate(p["method"].values):
            ax.plot(*method_curve(p, var, i), marker="o", ms=3, label=str(method))
        ax.set_xlabel("MACs retained (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(var.replace("acc_", "accuracy, "))
        ax.invert_xaxis()
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, out)


def trajectory(t, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = t["checkpoint"].values
    c = t["coupling_ix_it"]
    for k in range(c.sizes["layer"]):
        ax.plot(ep, c.isel(layer=k).values, color="0.8", lw=0.8)
    ax.plot(ep, t["coupling_ix_it_mean"].values, color="C0", lw=2, marker="o", label="layer mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Spearman ρ, I_X vs I(T;Y)")
    ax.set_title("coupling of the two axes during training")
    ax.legend()
    return save_figure(fig, out)


def lesion_predictors(summary_lesion: dict, out: Path) -> Path:
    pred = summary_lesion.get("spearman_layer_mean", {})
    within = summary_lesion.get("within_bin_pooled", {})
    names = sorted(set(pred) | set(within))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
    ax.bar(x - 0.2, [pred.get(n) or 0 for n in names], 0.4, label="across channels")
    ax.bar(x + 0.2, [within.get(n) or 0 for n in names], 0.4, label="within I(T;Y) bins")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Spearman(score, damage)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend()
    ax.set_title("which metric predicts lesion damage")
    return save_figure(fig, out)


def write_all(run: str | Path, summary: dict, where: str | Path | None = None) -> list[Path]:
    tree = open_run(run)
    d = figure_dir(run, where)
    written = []
    if "metrics" in tree.children and "task_info" in tree["metrics"].to_dataset():
        written.append(plane(tree["metrics"].to_dataset().compute(), d / "two_axis_plane.png"))
    if "structure" in tree.children:
        written.append(spearman_matrix(tree["structure"].to_dataset().compute(), d / "spearman_matrix.png"))
    if "pruning" in tree.children:
        written.append(pruning_curves(tree["pruning"].to_dataset().compute(), d / "pruning_curves.png"))
    if "trajectory" in tree.children and "coupling_ix_it_mean" in tree["trajectory"].to_dataset():
        written.append(trajectory(tree["trajectory"].to_dataset().compute(), d / "trajectory.png"))
    if "lesion" in summary:
        written.append(lesion_predictors(summary["lesion"], d / "lesion_predictors.png"))
    return written
