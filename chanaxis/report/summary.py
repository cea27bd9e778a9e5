"""The study's answers as plain numbers read from the store: one dict that the terminal tables, the JSON summary
and the tests all use, so what a person reads is exactly what is stored."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

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
    return {
        "ix_vs_it": {"mean": _f(mean[ix[head[0]], ix[head[1]]]), "sd": _f(sd[ix[head[0]], ix[head[1]]]),
                     "pooled": _f(pooled[ix[head[0]], ix[head[1]]])},
        "within_local": block(local_pairs), "within_target": block(target_pairs), "cross": block(cross_pairs),
        "layers": int(s.sizes["layer"]),
    }


def groupings(s) -> dict:
    ari, null, p = s["ari"].values, s["ari_null_mean"].values, s["ari_p"].values
    return {"ari_mean": _f(np.nanmean(ari)), "ari_null_mean": _f(np.nanmean(null)),
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
    if "structure" in tree.children:
        s = tree["structure"].to_dataset().compute()
        out["alignment"] = alignment(s)
        out["groupings"] = groupings(s)
        out["by_depth"] = by_depth(s)
        out["propagation"] = {str(k): _f(v) for k, v in zip(s["axis_pair"].values, s["propagation"].values)}
    for node, fn in (("trajectory", _trajectory), ("lesion", _lesion), ("pruning", _pruning)):
        if node in tree.children:
            out[node] = fn(tree[node].to_dataset().compute())
    if "preset" in tree.attrs:
        out["preset"] = tree.attrs["preset"]
    return out


def _trajectory(t) -> dict:
    res = {"checkpoints": [int(c) for c in t["checkpoint"].values]}
    if "coupling_ix_it" in t:
        c = t["coupling_ix_it"]
        c = c.mean("layer") if "layer" in c.dims else c
        res["coupling_ix_it"] = [_f(v) for v in c.values]
        res["coupling_init"], res["coupling_end"] = res["coupling_ix_it"][0], res["coupling_ix_it"][-1]
    for v in ("accuracy", "eval_accuracy", "calibration_accuracy"):
        if v in t and t[v].dims == ("checkpoint",):
            res[v] = [_f(x) for x in t[v].values]
    return res


def _lesion(ds) -> dict:
    res: dict = {"units": int(ds.sizes.get("unit", 0))}
    if "damage_loss" in ds:
        res["damage_loss_mean_nats"] = _f(np.nanmean(ds["damage_loss"].values))
    for v in ("recovery", "recovery_top8", "recovery_mean_ablation", "recovery_random"):
        if v in ds:
            res[f"{v}_median"] = _f(np.nanmedian(ds[v].values))
    for name in ("predictor_spearman_mean", "within_bin_rho"):
        if name in ds:
            var = ds[name]
            dim = var.dims[0]
            res[name] = {str(k): _f(v) for k, v in zip(ds[dim].values, var.values)}
    return res


def _pruning(ds) -> dict:
    res: dict = {}
    for v in ("auc_oneshot", "auc_finetuned", "auc"):
        if v in ds:
            var = ds[v]
            if "seed" in var.dims:
                var = var.mean("seed")
            res[v] = {str(k): _f(x) for k, x in zip(ds["method"].values, var.values)}
    for v in ds.data_vars:
        if v.startswith("diff_"):
            res[v] = {str(k): _f(x) for k, x in zip(ds[v].dims and ds[ds[v].dims[0]].values or [], ds[v].values)} \
                if ds[v].ndim == 1 else _f(ds[v].values)
    return res
