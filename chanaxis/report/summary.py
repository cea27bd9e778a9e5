"""The study's answers as plain numbers read from the store: one dict that the terminal tables, the JSON summary
and the tests all use, so what a person reads is exactly what is stored."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..claims import N_BOOT, bin_weights, bootstrap_columns, fisher_pooled, lesion_inert, nanmean, pruning_inert
from ..claims import evaluate as evaluate_claims
from ..store import open_run

LOCAL = ("input_capture", "peer_overlap", "weight_norm_sq", "peer_r2_full", "peer_r2_top8", "hull_score")
TARGET = ("task_info", "redundancy_t", "synergy", "unique_t")


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _pairs(metrics, a_set, b_set, same):
    out = []
    for i, a in enumerate(metrics):
        for j, b in enumerate(metrics):
            if j <= i:
                continue
            if same and ((a in a_set and b in a_set) or (a in b_set and b in b_set)):
                out.append((a, b))
            if not same and ((a in a_set and b in b_set) or (a in b_set and b in a_set)):
                out.append((a, b))
    return out


def alignment(s) -> dict:
    metrics = [str(m) for m in s["metric"].values]
    mean, sd, pooled = s["spearman_mean"].values, s["spearman_sd"].values, s["spearman_pooled"].values
    ix = {m: k for k, m in enumerate(metrics)}

    def block(pairs):
        vals = [abs(mean[ix[a], ix[b]]) for a, b in pairs if np.isfinite(mean[ix[a], ix[b]])]
        pv = [abs(pooled[ix[a], ix[b]]) for a, b in pairs if np.isfinite(pooled[ix[a], ix[b]])]
        return {"mean_abs_rho": _f(np.mean(vals)) if vals else None,
                "pooled_mean_abs_rho": _f(np.mean(pv)) if pv else None, "pairs": len(vals)}

    local_pairs = _pairs(metrics, set(LOCAL), set(), True)
    local_pairs = [p for p in local_pairs if p[0] in LOCAL and p[1] in LOCAL]
    target_pairs = [p for p in _pairs(metrics, set(TARGET), set(), True) if p[0] in TARGET and p[1] in TARGET]
    cross_pairs = _pairs(metrics, set(LOCAL), set(TARGET), False)
    head = ("input_capture", "task_info")
    out = {
        "ix_vs_it": {"mean": _f(mean[ix[head[0]], ix[head[1]]]), "sd": _f(sd[ix[head[0]], ix[head[1]]]),
                     "pooled": _f(pooled[ix[head[0]], ix[head[1]]])},
        "within_local": block(local_pairs), "within_target": block(target_pairs), "cross": block(cross_pairs),
        "layers": int(s.sizes["layer"]),
    }
    # 95 % intervals of the layer means: layers resampled (one draw for every row, so rows stay comparable)
    if "spearman" in s:
        rho = np.asarray(s["spearman"].values, np.float64)
        blocks = [(np.array([ix[a] for a, _ in p], np.intp), np.array([ix[b] for _, b in p], np.intp))
                  for p in (local_pairs, target_pairs, cross_pairs)]

        def stat(idx):
            m = nanmean(rho[idx], axis=0)
            row = []
            for a, b in blocks:
                v = np.abs(m[a, b]) if len(a) else np.array([])
                row.append(v[np.isfinite(v)].mean() if np.isfinite(v).any() else np.nan)
            row.append(m[ix[head[0]], ix[head[1]]])
            return np.array(row)
        got = bootstrap_columns(stat, rho.shape[0])
        if got is not None:
            for k, key in enumerate(("within_local", "within_target", "cross", "ix_vs_it")):
                out[key]["interval"] = [_f(got[0][k]), _f(got[1][k])]
            out["interval_resampled"] = f"layers ({rho.shape[0]}), {N_BOOT} resamples"
    return out


def groupings(s) -> dict:
    ari, null, p = s["ari"].values, s["ari_null_mean"].values, s["ari_p"].values
    mean = (lambda v: _f(np.nanmean(v)) if np.isfinite(v).any() else None)  # all undefined: None, never a warning
    return {"ari_mean": mean(ari), "ari_null_mean": mean(null),
            "layers_above_null_p05": int(np.sum(p < 0.05)), "layers": int(len(ari))}


def by_depth(s) -> list[dict]:
    rows = []
    for k, layer in enumerate(s["layer"].values):
        row = {"layer": str(layer)}
        for v in ("q_r", "q_s", "s3_s2", "grad_cos", "ari"):
            if v in s:
                row[v] = _f(s[v].values[k])
        rows.append(row)
    return rows


def summarize(path: str | Path) -> dict:
    tree = open_run(path)
    out: dict = {"run": str(path), "status": dict(tree.attrs.get("status", {})),
                 "config": tree.attrs.get("config", {})}
    if "samples" in tree.children:
        out["calibration_accuracy_pct"] = _f(tree["samples"]["correct"].mean().compute() * 100)
        out["images"] = int(tree["samples"].sizes["image"])
    if "graph" in tree.children:
        out["total_macs"] = int(tree["graph"].attrs["total_macs"])
        out["layers"] = int(tree["graph"].sizes["layer"])
    if "metrics" in tree.children:
        out["target"] = tree["metrics"].attrs.get("target", "")
    if "structure" in tree.children:
        s = tree["structure"].to_dataset().compute()
        out["alignment"] = alignment(s)
        out["groupings"] = groupings(s)
        out["by_depth"] = by_depth(s)
        out["propagation"] = {str(k): _f(v) for k, v in zip(s["axis_pair"].values, s["propagation"].values)}
    if "trajectory" in tree.children:
        out["trajectory"] = _trajectory(tree["trajectory"].to_dataset().compute())
    if "lesion" in tree.children and "damage_loss" in tree["lesion"].to_dataset():
        pred = tree["lesion/predictors"].to_dataset().compute() if "predictors" in tree["lesion"].children else None
        out["lesion"] = lesion_summary(tree["lesion"].to_dataset().compute(), pred)
    if "pruning" in tree.children and "auc_mean" in tree["pruning"].to_dataset():
        out["pruning"] = _pruning(tree["pruning"].to_dataset().compute())
    if "preset" in tree.attrs:
        out["preset"] = tree.attrs["preset"]
    out["claims"] = evaluate_claims(tree)  # the paper's claims as verdicts (chanaxis/claims.py); the last section
    return out


def _trajectory(t) -> dict:
    res: dict = {"checkpoints": [int(c) for c in t["checkpoint"].values]}
    if "coupling_ix_it_mean" in t:
        res["coupling_ix_it"] = [_f(v) for v in t["coupling_ix_it_mean"].values]
        res["coupling_init"], res["coupling_end"] = res["coupling_ix_it"][0], res["coupling_ix_it"][-1]
    for v in ("eval_acc", "calibration_acc", "grad_cos_mean"):
        if v in t:
            res[v] = [_f(x) for x in t[v].values]
    if "rank_stability_mean" in t and "axis" in t.coords:
        axis = np.asarray([str(a) for a in t["axis"].values])
        rs = t["rank_stability_mean"].values
        for ax in ("local", "target"):
            res[f"rank_stability_{ax}"] = [_f(np.nanmean(row[axis == ax])) for row in rs]
    return res


def lesion_summary(ds, pred=None) -> dict:
    res: dict = {"units": int(ds.sizes.get("unit", 0)),
                 "damage_loss_mean_nats": _f(np.nanmean(ds["damage_loss"].values)),
                 "damage_acc_mean_pct": _f(np.nanmean(ds["damage_acc"].values))}
    res["inert"] = lesion_inert(ds["damage_loss"].values, ds["damage_acc"].values)
    for v in ("recovery", "recovery_top8", "recovery_mean_ablation", "recovery_random_peer"):
        if v in ds:
            res[f"{v}_median"] = _f(np.nanmedian(ds[v].values))
    if pred is not None:
        names = [str(m) for m in pred["metric"].values]
        res["spearman_layer_mean"] = dict(zip(names, [_f(v) for v in pred["spearman_layer_mean"].values]))
        res["within_bin_pooled"] = dict(zip(names, [_f(v) for v in pred["within_bin_pooled"].values]))
        # 95 % intervals, layers resampled: the layer mean of the per-layer ρ, and the within-bin ρ pooled over the
        # resampled layers with each layer's Fisher weight (METHOD §6's pooling, a layer at a time)
        sp, wb = np.asarray(pred["spearman"].values, np.float64), np.asarray(pred["within_bin"].values, np.float64)
        w = bin_weights(pred["n_units"].values, int(pred.attrs.get("n_bins", 5)))
        n = sp.shape[0]
        got = bootstrap_columns(lambda idx: nanmean(sp[idx], axis=0), n)
        if got is not None:
            res["spearman_layer_mean_interval"] = {m: [_f(got[0][i]), _f(got[1][i])] for i, m in enumerate(names)}
            res["interval_resampled"] = f"layers ({n}), {N_BOOT} resamples"
        # only layers with bins of more than 3 lesions carry a within-bin ρ: those are the units resampled
        carry = np.flatnonzero(w > 0)
        got = bootstrap_columns(lambda idx: fisher_pooled(wb, w, carry[idx]), len(carry))
        if got is not None:
            res["within_bin_pooled_interval"] = {m: [_f(got[0][i]), _f(got[1][i])] for i, m in enumerate(names)}
            res["within_interval_resampled"] = f"layers with within-bin ρ ({len(carry)}), Fisher-weighted, " \
                                               f"{N_BOOT} resamples"
        scope = [str(x) for x in pred["r2_scope"].values]
        if "pooled" in scope:
            k = scope.index("pooled")
            res["peer_support_delta_r2"] = _f(pred["delta_r2"].values[k])
            res["peer_support_delta_r2_p"] = _f(pred["delta_r2_p"].values[k])
            res["peer_support"] = list(pred.attrs.get("peer_support", []))
    return res


def _pruning(ds) -> dict:
    regimes = [str(r) for r in ds["regime"].values]
    methods = [str(m) for m in ds["method"].values]
    res: dict = {"methods": methods, "axis": [str(a) for a in ds["axis"].values],
                 "base_accuracy_pct": _f(ds["base_accuracy"].values),
                 "auc_interval": {r: [_f(x) for x in ds["auc_interval"].values[i]] for i, r in enumerate(regimes)},
                 "auc": {r: dict(zip(methods, [_f(x) for x in ds["auc_mean"].values[i]]))
                         for i, r in enumerate(regimes)},
                 "contrasts": {}}
    for i, r in enumerate(regimes):
        res["contrasts"][r] = {
            str(c): {"mean": _f(ds["contrast_mean"].values[i, j]), "ci_low": _f(ds["contrast_ci_low"].values[i, j]),
                     "ci_high": _f(ds["contrast_ci_high"].values[i, j]),
                     "resampled": str(ds["contrast_resamples"].values[i, j]) if "contrast_resamples" in ds else None}
            for j, c in enumerate(ds["contrast"].values)}
        res.setdefault("best_local", {})[r] = str(ds["best_local"].values[i])
        res.setdefault("best_target", {})[r] = str(ds["best_target"].values[i])
    res["interval"] = ds.attrs.get("contrast_interval")
    res["inert"] = pruning_inert(ds)
    res["seeds"] = [int(x) for x in ds["seed"].values]
    return res
