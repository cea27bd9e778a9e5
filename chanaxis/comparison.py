"""`chanaxis compare`: several runs side by side in the paper's layout — a row per run (model · dataset · preset ·
accuracy), a column per claim with this run's statistic, its interval and the verdict (chanaxis/claims.py).

`compare([...])` returns an xarray Dataset with dimensions run × claim; `collect` the same as plain dicts (the JSON);
`render` the rich table; `figures` the runs' two-axis planes and pruning curves side by side (shared axes). Runs made
with different presets or calibration sizes are marked, never silently mixed.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from .claims import CLAIMS, SHORT
from .errors import ChanaxisError
from .estimators.ranks import percentile_ranks
from .report.summary import summarize
from .report.terminal import VERDICT_STYLE, band
from .store import open_run
from .study import resolve_store


def _accuracy(tree, summary: dict) -> tuple[float | None, str]:
    """The run's held-out accuracy (%) and where it comes from: the pruning or lesion evaluation images, the last
    training checkpoint, else the calibration (training) images."""
    pr = summary.get("pruning", {}).get("base_accuracy_pct")
    if pr is not None:
        return pr, "pruning eval"
    try:
        acc = tree["lesion"].attrs.get("base_accuracy_pct")
        if acc is not None and not math.isnan(float(acc)):
            return float(acc), "lesion eval"
    except KeyError:
        pass
    ev = [x for x in summary.get("trajectory", {}).get("eval_acc", []) or [] if x is not None]
    if ev:
        return ev[-1], "held-out, last epoch"
    return summary.get("calibration_accuracy_pct"), "calibration, train split"


def describe(path) -> dict:
    """One run's row: who it is and its claims."""
    store = resolve_store(path)
    try:
        tree = open_run(store)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ChanaxisError(f"'{path}' is not a run store or a study folder ({type(e).__name__}: {e})") from e
    s = summarize(store)
    cfg = s.get("config", {})
    preset = s.get("preset", {})
    acc, acc_on = _accuracy(tree, s)
    return {"run": str(path), "store": str(store), "model": cfg.get("model", {}).get("name", "?"),
            "dataset": cfg.get("dataset", {}).get("name", "?"),
            "preset": preset.get("name", "custom") if isinstance(preset, dict) else str(preset),
            "n_calibration": s.get("images", cfg.get("n_calibration")), "accuracy_pct": acc, "accuracy_on": acc_on,
            "claims": s.get("claims", [])}


def collect(paths) -> dict:
    """{"runs": [row per run], "notes": [lines]}; each row's "note" says how it differs where runs differ in preset
    or calibration size."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ChanaxisError("compare needs at least one run store or study folder")
    runs = [describe(p) for p in paths]
    notes = []
    for key, label in (("preset", "preset"), ("n_calibration", "calibration size")):
        values = [r[key] for r in runs]
        if len(set(map(str, values))) > 1:
            which = ", ".join(f"{r['model']}: {r[key]}" for r in runs)
            notes.append(f"the runs differ in {label} ({which}): their statistics are not measured alike")
            for r in runs:
                r.setdefault("note", []).append(f"{label} {r[key]}")
    for r in runs:
        r["note"] = "; ".join(r.get("note", []))
    labels = [f"{r['model']} · {r['dataset']} · {r['preset']}" for r in runs]
    for k, lab in enumerate(labels):  # unique run labels
        runs[k]["label"] = lab if labels.count(lab) == 1 else f"{lab} #{labels[:k + 1].count(lab)}"
    return {"runs": runs, "notes": notes}


def to_dataset(got: dict) -> xr.Dataset:
    runs = got["runs"]
    ids = [c.id for c in CLAIMS]

    def grid(field, fill, dtype):
        out = np.full((len(runs), len(ids)), fill, dtype=dtype)
        for i, r in enumerate(runs):
            by_id = {c["id"]: c for c in r["claims"]}
            for j, cid in enumerate(ids):
                v = by_id.get(cid, {}).get(field)
                if v is not None:
                    out[i, j] = v
        return out
    ds = xr.Dataset(
        {"value": (("run", "claim"), grid("value", np.nan, np.float64)),
         "low": (("run", "claim"), grid("low", np.nan, np.float64)),
         "high": (("run", "claim"), grid("high", np.nan, np.float64)),
         "verdict": (("run", "claim"), grid("verdict", "not measured", object).astype(str)),
         "reason": (("run", "claim"), grid("reason", "", object).astype(str)),
         "resampled": (("run", "claim"), grid("resampled", "", object).astype(str))},
        coords={"run": [r["label"] for r in runs], "claim": ids,
                "path": ("run", [r["run"] for r in runs]), "model": ("run", [r["model"] for r in runs]),
                "dataset": ("run", [r["dataset"] for r in runs]), "preset": ("run", [r["preset"] for r in runs]),
                "n_calibration": ("run", [-1 if r["n_calibration"] is None else int(r["n_calibration"])
                                          for r in runs]),
                "accuracy_pct": ("run", [np.nan if r["accuracy_pct"] is None else r["accuracy_pct"] for r in runs]),
                "accuracy_on": ("run", [r["accuracy_on"] for r in runs]),
                "note": ("run", [r["note"] for r in runs]),
                "claim_text": ("claim", [c.claim for c in CLAIMS]), "statistic": ("claim", [c.statistic for c in CLAIMS]),
                "rule": ("claim", [c.rule for c in CLAIMS]), "method_section": ("claim", [c.method_section for c in CLAIMS])})
    ds["low"].attrs["description"] = "95 % percentile-bootstrap bound (NaN: no interval); `resampled` says over what"
    ds.attrs["notes"] = list(got["notes"])
    ds.attrs["mixed"] = bool(got["notes"])
    return ds


def compare(runs) -> xr.Dataset:
    """Runs (stores or study folders) side by side: a Dataset over run × claim with each claim's statistic (`value`),
    its interval (`low`, `high`; NaN where there is none), `verdict`, `reason` and what was `resampled`; the runs'
    model, dataset, preset, calibration size and accuracy as coordinates; `attrs["notes"]` marks mixed presets or
    calibration sizes."""
    return to_dataset(collect(runs))


def cell(x: dict) -> str:
    """'value\n[low, high]\n' in two decimals; no interval line where there is none (never a zero-width CI)."""
    if x.get("value") is None:
        return ""
    return f"{x['value']:+.2f}\n{band((x.get('low'), x.get('high'))).strip() or '(no interval)'}\n"


PAPER_LAYOUT_MIN_WIDTH = 120   # a row per run needs ~13 columns per claim; narrower terminals get claims as rows


def render(got: dict, console=None) -> None:
    """The paper's layout (a row per run, a column per claim) on a terminal at least PAPER_LAYOUT_MIN_WIDTH wide;
    narrower, the same cells transposed (a row per claim, a column per run), so no verdict is cut mid-word. Then the
    statistics' definitions, the reasons of every verdict reached without an interval, and mixed-run warnings."""
    from rich.console import Console
    from rich.table import Table

    c = console or Console()
    runs = got["runs"]
    mixed = any(r["note"] for r in runs)

    def head(r):
        acc = "—" if r["accuracy_pct"] is None else f"{r['accuracy_pct']:.1f} %"
        return f"{r['model']}\n{r['dataset']} · {r['preset']}\n{acc} [dim]({r['accuracy_on']})[/dim]"

    by_id = [{y["id"]: y for y in r["claims"]} for r in runs]

    def body(k, cl):
        x = by_id[k].get(cl.id)
        if x is None:
            return "—"
        return f"{cell(x)}[{VERDICT_STYLE.get(x['verdict'], '')}]{x['verdict']}[/]"

    title = "The paper's claims across runs: statistic [95 % interval] and verdict"
    if c.width >= PAPER_LAYOUT_MIN_WIDTH:
        t = Table(title=title, show_lines=True)
        t.add_column("run", overflow="fold")
        for cl in CLAIMS:
            t.add_column(f"{cl.id}. {SHORT[cl.id]}", overflow="fold")
        if mixed:
            t.add_column("note", overflow="fold")
        for k, r in enumerate(runs):
            t.add_row(head(r), *[body(k, cl) for cl in CLAIMS], *([r["note"]] if mixed else []))
    else:
        t = Table(title=title + f" (a row per claim at this width; {PAPER_LAYOUT_MIN_WIDTH}+ columns show the "
                  "paper's layout, a row per run)", show_lines=True)
        t.add_column("claim", overflow="fold")
        for r in runs:
            t.add_column(head(r) + (f"\n[yellow]{r['note']}[/yellow]" if r["note"] else ""), overflow="fold")
        for cl in CLAIMS:
            t.add_row(f"{cl.id}. {SHORT[cl.id]}", *[body(k, cl) for k in range(len(runs))])
    c.print(t)
    c.print("statistics: " + "; ".join(f"{cl.id}. {cl.statistic} (rule: {cl.rule})" for cl in CLAIMS), style="dim")
    for r in runs:  # inconclusive for another reason than an interval crossing the line: say why (no cell can)
        for x in r["claims"]:
            if x["verdict"] == "inconclusive" and x.get("value") is not None \
                    and not str(x.get("reason", "")).startswith("the interval"):
                c.print(f"{r['label']}, claim {x['id']}: {x.get('reason', '')}")
    for n in got["notes"]:
        c.print(f"[yellow]warning: {n}[/yellow]")

def _ranks_within(values, groups) -> np.ndarray:
    """Percentile rank (%) of each value within its group (layer); NaN stays NaN."""
    out = np.full(len(values), np.nan)
    for g in np.unique(groups):
        sel = groups == g
        out[sel] = 100 * percentile_ranks(values[sel])
    return out


def figures(paths, out_dir, got: dict | None = None) -> list[Path]:
    """The runs side by side, written to `out_dir`: `compare_planes.png` (a row per run: every channel's I_X against
    I(T;Y) in nats, coloured by relative depth, and the same as within-layer percentile ranks, the scale the
    alignment claims use) and `compare_pruning.png` (a column per run, a row per regime: accuracy (%) against MACs
    removed (%), the axes shared so the runs read side by side). `got`: `collect(paths)` when the caller has it
    already. Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .locations import location
    from .report.figures import method_curve, save_figure
    got = got or collect(paths)
    out_dir = location(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trees = [open_run(r["store"]) for r in got["runs"]]
    written = []

    with_metrics = [(r, t["metrics"].to_dataset()) for r, t in zip(got["runs"], trees)
                    if "metrics" in t.children and "task_info" in t["metrics"].to_dataset()]
    if with_metrics:
        fig, axes = plt.subplots(len(with_metrics), 2, figsize=(10, 3.6 * len(with_metrics)), squeeze=False,
                                 layout="constrained")
        for (r, m), row in zip(with_metrics, axes):
            ix, it = m["input_capture"].values, m["task_info"].values
            layer = np.asarray([str(x) for x in m["layer"].values])
            depth = m["depth"].values / max(int(m["depth"].values.max()), 1)  # the layer's position, 0 = first
            sc = row[0].scatter(ix, it, c=depth, cmap="viridis", s=4, alpha=0.6, vmin=0, vmax=1)
            row[0].set_xlabel("I_X (nats)")
            row[0].set_ylabel("I(T;Y) (nats)")
            row[0].set_title(f"{r['label']}: two-axis plane", fontsize=9)
            row[1].scatter(_ranks_within(ix, layer), _ranks_within(it, layer), c=depth, cmap="viridis", s=4,
                           alpha=0.6, vmin=0, vmax=1)
            row[1].set_xlim(-2, 102)
            row[1].set_ylim(-2, 102)
            row[1].set_xlabel("I_X, rank within layer (%)")
            row[1].set_ylabel("I(T;Y), rank within layer (%)")
            row[1].set_title("within-layer ranks", fontsize=9)
            fig.colorbar(sc, ax=row.tolist(), label="relative depth (0 = first layer, 1 = last)")
        fig.suptitle("two-axis planes, one row per run")
        written.append(save_figure(fig, out_dir / "compare_planes.png", tight=False))

    with_pruning = [(r, t["pruning"].to_dataset().compute()) for r, t in zip(got["runs"], trees)
                    if "pruning" in t.children and "acc_oneshot" in t["pruning"].to_dataset()]
    if with_pruning:
        methods = list(dict.fromkeys(str(x) for _, p in with_pruning for x in p["method"].values))
        colour = {m: f"C{k % 10}" for k, m in enumerate(methods)}
        regimes = [v for v in ("acc_oneshot", "acc_finetuned") if any(v in p for _, p in with_pruning)]
        fig, axes = plt.subplots(len(regimes), len(with_pruning), figsize=(4.6 * len(with_pruning),
                                 3.6 * len(regimes)), squeeze=False, sharex=True, sharey=True)
        for j, (r, p) in enumerate(with_pruning):
            for i, var in enumerate(regimes):
                ax = axes[i, j]
                if var not in p:
                    ax.set_title(f"{r['label']}: no {var.replace('acc_', '')} pruning", fontsize=8)
                    continue
                for k, method in enumerate(p["method"].values):
                    retained, acc = method_curve(p, var, k)
                    ax.plot(100.0 - retained, acc, marker="o", ms=3, color=colour[str(method)], label=str(method))
                ax.set_title(f"{r['label']}\n{var.replace('acc_', '')}, base {float(p['base_accuracy']):.1f} %",
                             fontsize=8)
                if i == len(regimes) - 1:
                    ax.set_xlabel("MACs removed (%)")
                if j == 0:
                    ax.set_ylabel("accuracy (%), mean over seeds")
        handles = [plt.Line2D([], [], color=colour[m], marker="o", ms=3, label=m) for m in methods]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 6), fontsize=8)
        fig.suptitle("pruning at matched MACs, runs side by side (shared axes)")
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        written.append(save_figure(fig, out_dir / "compare_pruning.png", tight=False))
    return written
