"""Rich terminal tables answering the paper's questions from `summary.summarize`."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..claims import has_interval


def _n(x, fmt="{:+.2f}", unit=""):
    return "—" if x is None else fmt.format(x) + unit


def render(summary: dict, console: Console | None = None) -> None:
    c = console or Console()
    cfg = summary.get("config", {})
    model = cfg.get("model", {})
    ds = cfg.get("dataset", {})
    c.rule(f"[bold]chanaxis report[/] — {model.get('name', '?')} on {ds.get('name', '?')}")
    line = [f"{summary.get('images', '?')} calibration images"]
    if summary.get("calibration_accuracy_pct") is not None:
        line.append(f"calibration accuracy {summary['calibration_accuracy_pct']:.1f} %")
    if summary.get("total_macs"):
        line.append(f"{summary['total_macs'] / 1e6:.1f} M MACs per image")
    if summary.get("layers"):
        line.append(f"{summary['layers']} analysed layers")
    c.print(", ".join(line))
    if "preset" in summary:
        c.print("preset: " + ", ".join(f"{k}={v}" for k, v in summary["preset"].items()))
    if str(summary.get("target", "")).startswith("undefined"):
        c.print(f"[yellow]The target axis is {summary['target']}: every comparison with it below is undefined (—).")

    if "alignment" in summary:
        a = summary["alignment"]
        t = Table(title="(1) Are the axes weakly aligned? Spearman ρ between channel metrics, within layers"
                        + (f"; [95 % interval], {a['interval_resampled']}" if a.get("interval_resampled") else ""))
        for col in ("comparison", "layer mean |ρ|", "pooled-rank |ρ|", "pairs"):
            t.add_column(col, justify="right" if col != "comparison" else "left", overflow="fold")
        for key, label in (("within_local", "within the local axis"), ("within_target", "within the target axis"),
                           ("cross", "across the axes")):
            b = a[key]
            t.add_row(label, _n(b["mean_abs_rho"], "{:.2f}") + band(b.get("interval"), "{:.2f}"),
                      _n(b["pooled_mean_abs_rho"], "{:.2f}"), str(b["pairs"]))
        h = a["ix_vs_it"]
        t.add_row("I_X vs I(T;Y) (signed)", f"{_n(h['mean'])} ± {_n(h['sd'], '{:.2f}')} (s.d.)"
                  + band(h.get("interval")), _n(h["pooled"]), "1")
        c.print(t)
    if "groupings" in summary:
        g = summary["groupings"]
        c.print(f"(2) Do they group channels differently? k-means ARI local vs target partitions: "
                f"mean {_n(g['ari_mean'], '{:.3f}')} vs label-permutation null {_n(g['ari_null_mean'], '{:.3f}')}; "
                f"{g['layers_above_null_p05']}/{g['layers']} layers above the null at p < 0.05 "
                "(ARI 1 = the same grouping, 0 = unrelated)")
    if "trajectory" in summary:
        tr = summary["trajectory"]
        if tr.get("coupling_init") is not None:
            drop = next((r for r in summary.get("claims", []) if r["id"] == 3 and r.get("value") is not None), None)
            c.print(f"(3) Did they separate in training? layer-mean Spearman I_X vs I(T;Y): "
                    f"{_n(tr['coupling_init'])} at epoch {tr['checkpoints'][0]} → {_n(tr['coupling_end'])} at epoch "
                    f"{tr['checkpoints'][-1]}" + (f"; drop {interval_text(drop)}, {drop['resampled']}" if drop else ""))
            t = Table(title="trajectory: coupling and rank stability against the last checkpoint (Spearman)")
            for col in ("epoch", "I_X vs I(T;Y)", "local ranks", "target ranks", "eval accuracy"):
                t.add_column(col, justify="right")
            for k, ep in enumerate(tr["checkpoints"]):
                t.add_row(str(ep), _n(tr["coupling_ix_it"][k]), _n((tr.get("rank_stability_local") or [None] * 99)[k]),
                          _n((tr.get("rank_stability_target") or [None] * 99)[k]),
                          _n((tr.get("eval_acc") or [None] * 99)[k], "{:.1f}", " %"))
            c.print(t)
    else:
        c.print("(3) Did they separate in training? — no trajectory in this run (needs training checkpoints)")
    if "lesion" in summary:
        _lesion(c, summary["lesion"])
    if "pruning" in summary:
        _pruning(c, summary["pruning"])
    if "by_depth" in summary:
        t = Table(title="By depth: modularity Q_R (peer-overlap graph) and Q_S (synergy graph), S3/S2, grad_cos")
        for col in ("layer", "Q_R", "Q_S", "S3/S2", "grad_cos |cos|", "ARI"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for r in summary["by_depth"]:
            t.add_row(r["layer"], _n(r.get("q_r"), "{:.3f}"), _n(r.get("q_s"), "{:.3f}"), _n(r.get("s3_s2"), "{:.2f}"),
                      _n(r.get("grad_cos"), "{:.3f}"), _n(r.get("ari"), "{:.3f}"))
        c.print(t)
    if summary.get("propagation"):
        p = summary["propagation"]
        c.print("Cross-layer propagation (Spearman of influence-weighted prediction): " +
                ", ".join(f"{k} {_n(v)}" for k, v in p.items()))
    if summary.get("claims"):
        claims_table(c, summary["claims"])


VERDICT_STYLE = {"reproduced": "bold green", "not reproduced": "bold red", "inconclusive": "yellow",
                 "not measured": "dim"}


def interval_text(row: dict) -> str:
    """'value [low, high]', or 'value (no interval)': a zero-width or missing interval is never printed as a CI."""
    if row.get("value") is None:
        return "—"
    return f"{row['value']:+.3g}" + (band((row.get("low"), row.get("high")), "{:+.3g}") or " (no interval)")


def claims_table(c, rows: list[dict]) -> None:
    """The paper's claims, this run's statistic with its 95 % interval and what it resamples, the rule, the verdict."""
    t = Table(title="The paper's claims on this run: statistic, 95 % percentile-bootstrap interval (what it "
                    "resamples), rule and verdict (inconclusive: the interval crosses the threshold or there is none)",
              show_lines=True)
    t.add_column("#", justify="right", overflow="fold")
    t.add_column("claim (METHOD)", overflow="fold", ratio=3)
    t.add_column("statistic · rule", overflow="fold", ratio=3)
    t.add_column("this run", overflow="fold", ratio=3)
    t.add_column("verdict", overflow="fold", ratio=3)
    for r in rows:
        stat = f"{r['statistic']}\n[dim]rule: {r['rule']}[/dim]"
        value = interval_text(r) + (f"\n[dim]resampled: {r['resampled']}[/dim]" if r.get("resampled") else "")
        style = VERDICT_STYLE.get(r["verdict"], "")
        t.add_row(str(r["id"]), f"{r['claim']}\n[dim]{r['method_section']}[/dim]", stat, value,
                  f"[{style}]{r['verdict']}[/]\n[dim]{r.get('reason', '')}[/dim]")
    c.print(t)


def band(iv, fmt="{:+.2f}") -> str:
    """' [low, high]' for a 95 % interval; '' where there is none (never a zero-width interval shown as one)."""
    if not iv or not has_interval(*iv):
        return ""
    return f" [{fmt.format(iv[0])}, {fmt.format(iv[1])}]"


def _lesion(c, les: dict) -> None:
    t = Table(title="(4) Which metric predicts lesion damage? Spearman(score, damage), layer mean, and within 5 "
                    "bins of I(T;Y) (Fisher-z pooled); positive = a high score marks a channel the network needs"
                    + "; [95 % interval]: across channels " + (les.get("interval_resampled") or
                                                               "none (fewer than 3 layers)")
                    + ", within bins " + (les.get("within_interval_resampled") or
                                          "none (fewer than 3 layers with bins of more than 3 lesions)"))
    t.add_column("metric", overflow="fold")
    t.add_column("across channels", justify="right", overflow="fold")
    t.add_column("within I(T;Y) bins", justify="right", overflow="fold")
    pred = les.get("spearman_layer_mean", {})
    within = les.get("within_bin_pooled", {})
    pred_iv = les.get("spearman_layer_mean_interval", {})
    within_iv = les.get("within_bin_pooled_interval", {})
    order = sorted(set(pred) | set(within), key=lambda k: -abs(within.get(k) or 0))
    for k in order:
        t.add_row(k, _n(pred.get(k)) + band(pred_iv.get(k)), _n(within.get(k)) + band(within_iv.get(k)))
    c.print(t)
    parts = [f"{les['units']} lesions, mean damage {_n(les.get('damage_loss_mean_nats'), '{:.4f}', ' nats')} "
             f"({_n(les.get('damage_acc_mean_pct'), '{:+.2f}', ' % accuracy')})"]
    c.print(parts[0])
    if les.get("inert"):
        c.print(f"[bold yellow]warning: {les['inert']}.[/bold yellow]")
    rec = []
    for k, label in (("recovery_median", "hull peers"), ("recovery_top8_median", "top-8 peers"),
                     ("recovery_mean_ablation_median", "mean ablation (control)"),
                     ("recovery_random_peer_median", "random peers (control)")):
        if les.get(k) is not None:
            rec.append(f"{label} {les[k] * 100:.0f} %")
    if rec:
        c.print("Peer replacement, median recovery of the lesion damage: " + ", ".join(rec))
    if les.get("peer_support_delta_r2") is not None:
        c.print(f"Peer support ({', '.join(les.get('peer_support', []))}) adds ΔR² = "
                f"{les['peer_support_delta_r2']:.3f} over (I_X, I(T;Y)) in predicting damage "
                f"(p = {_n(les.get('peer_support_delta_r2_p'), '{:.3g}')})")


def _pruning(c, pr: dict) -> None:
    regimes = list(pr["auc"])
    t = Table(title="(5) Which axis prunes better at matched MACs? AUC = mean accuracy (%) over the MACs-reduction "
                    "interval every method covers, mean over seeds")
    t.add_column("method")
    t.add_column("axis")
    for r in regimes:
        lo, hi = pr["auc_interval"][r]
        t.add_column(f"{r} AUC ({_n(lo and lo * 100, '{:.0f}')}–{_n(hi and hi * 100, '{:.0f}')} % MACs removed)",
                     justify="right")
    for m, ax in zip(pr["methods"], pr["axis"]):
        t.add_row(m, ax, *[_n(pr["auc"][r].get(m), "{:.1f}", " %") for r in regimes])
    c.print(t)
    if pr.get("inert"):
        c.print(f"[bold yellow]warning: {pr['inert']}.[/bold yellow]")
    empty = [r for r in regimes
             if None not in pr["auc_interval"][r] and pr["auc_interval"][r][0] > pr["auc_interval"][r][1]]
    if empty:
        lo, hi = pr["auc_interval"][empty[0]]
        c.print(f"[yellow]No MACs-reduction interval is covered by every method ({', '.join(empty)}): the smallest "
                f"level already removes {lo * 100:.0f} % of the MACs for some method while another never removes more "
                f"than {hi * 100:.0f} %. Add lower and higher levels (`--levels`).[/yellow]")
    t = Table(title=f"paired AUC differences in AUC points (%), seeds {pr['seeds']}, with "
                    + (pr.get("interval") or "percentile bootstrap 95% CI"))
    t.add_column("contrast")
    for r in regimes:
        t.add_column(r, justify="right")
    contrasts = list(pr["contrasts"][regimes[0]])
    for k in contrasts:
        cells = []
        for r in regimes:
            d = pr["contrasts"][r][k]
            if d["mean"] is not None and d["ci_low"] is not None and d["ci_high"] is not None \
                    and d["ci_high"] > d["ci_low"]:
                cell = f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            else:  # no interval (never a zero-width one shown as a CI): the reason the store gives
                cell = f"{_n(d['mean'], '{:+.2f}')} (no interval" + (
                    f": {d['resampled']})" if d.get("resampled") and d["mean"] is not None else ")")
            if "best_" in k:  # the best method of each axis is picked per regime: name them in the cell
                picks = k.replace("best_local", pr["best_local"][r]).replace("best_target", pr["best_target"][r])
                cell += f"\n({picks.replace('-', ' − ')})"
            cells.append(cell)
        t.add_row(k.replace("best_local", "best local").replace("best_target", "best target").replace("-", " − "),
                  *cells)
    c.print(t)
