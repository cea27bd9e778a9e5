"""Pruning scores of METHOD §7 (higher = keep) and their allocation across layers."""
from __future__ import annotations

import numpy as np

from ..errors import ChanaxisError
from .common import strings

LOCAL = ("input_capture", "ix_minus_red", "composite_local", "hull")
TARGET = ("task_info", "composite_target")
BASELINES = ("magnitude", "taylor", "random")
CONTROLS = ("ix_plus_red",)
METHODS = LOCAL + TARGET + BASELINES + CONTROLS
AXIS = {**{m: "local" for m in LOCAL}, **{m: "target" for m in TARGET}, **{m: "baseline" for m in BASELINES},
        **{m: "control" for m in CONTROLS}}
ALLOCATIONS = ("global", "uniform", "taylor_hybrid")
LOG_FLOOR = 1e-12


def check_methods(methods) -> list[str]:
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ChanaxisError(f"unknown pruning method '{bad[0]}'; valid methods: {', '.join(METHODS)}")
    if not methods:
        raise ChanaxisError(f"no pruning method given; valid methods: {', '.join(METHODS)}")
    return methods


def check_allocation(allocation: str) -> str:
    if allocation not in ALLOCATIONS:
        raise ChanaxisError(f"unknown allocation '{allocation}'; valid allocations: {', '.join(ALLOCATIONS)}")
    return allocation


def check_levels(levels) -> list[float]:
    try:
        levels = sorted({float(v) for v in levels})
    except (TypeError, ValueError):
        raise ChanaxisError(f"--levels must be numbers in (0, 1), e.g. 0.1 0.5 0.9; got {levels!r}") from None
    bad = [v for v in levels if not 0.0 < v < 1.0]
    if bad or not levels:
        raise ChanaxisError(f"pruning level {bad[0] if bad else 'list'} is outside (0, 1); levels are the fraction "
                            "of prunable channels removed, e.g. 0.1 0.5 0.9")
    return levels


def default_allocation(graph) -> str:
    """METHOD §7: global for plain/residual CNNs (ResNet, VGG), uniform for MobileNetV2 and ConvNeXt."""
    return "uniform" if any(l.kind in ("dwconv", "linear") for l in graph.layers) else "global"


def _per_layer(x, layer, fn):
    out = np.empty_like(x, dtype=np.float64)
    for name in np.unique(layer):
        sel = layer == name
        out[sel] = fn(x[sel])
    return out


def minmax(x, layer) -> np.ndarray:
    """n(·): min–max normalised within each layer (0 where a layer's values are all equal)."""
    def f(v):
        lo, hi = np.nanmin(v), np.nanmax(v)
        return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return _per_layer(np.asarray(x, np.float64), np.asarray(layer), f)


def _log(x):
    return np.log(np.maximum(np.asarray(x, np.float64), LOG_FLOOR))


def score(method: str, m, seed: int = 0, taylor=None) -> np.ndarray:
    """Per-unit score (higher = keep) from the /metrics table `m` (a Dataset with dim unit)."""
    layer = strings(m["layer"].values)

    def g(k):
        if k not in m:
            raise ChanaxisError(f"the '{method}' score needs /metrics variable '{k}', which this store lacks; rerun "
                                "`chanaxis metrics RUN --only local,target`")
        return np.asarray(m[k].values, np.float64)
    n = lambda v: minmax(v, layer)  # noqa: E731
    if method in ("input_capture", "task_info", "magnitude"):
        s = g(method)
    elif method == "ix_minus_red":
        s = n(g("input_capture")) - 0.5 * n(g("peer_overlap"))
    elif method == "ix_plus_red":
        s = n(g("input_capture")) + 0.5 * n(g("peer_overlap"))
    elif method == "composite_local":
        s = n(_log(g("input_capture"))) + 0.5 * n(g("synergy")) - 0.3 * n(g("peer_overlap"))
    elif method == "hull":
        s = -n(g("hull_score")) + n(g("input_capture"))
    elif method == "composite_target":
        s = n(_log(g("task_info"))) + 0.5 * n(g("synergy")) - 0.3 * n(g("redundancy_t"))
    elif method == "taylor":
        if taylor is None:
            raise ValueError("taylor scores must be computed first")
        s = np.asarray(taylor, np.float64)
    elif method == "random":
        s = np.random.default_rng(seed).random(len(layer))
    else:
        check_methods([method])
    # a channel with no defined score (dead, constant) goes first
    return np.where(np.isfinite(s), s, -np.inf)


def n_prune_per_layer(scores: dict[str, np.ndarray], level: float, allocation: str) -> dict[str, int]:
    """How many channels each layer loses at channel sparsity `level`, keeping ≥ 1 per layer."""
    sizes = {k: len(v) for k, v in scores.items()}
    if allocation == "uniform":
        return {k: min(c - 1, int(round(level * c))) for k, c in sizes.items()}
    total = int(round(level * sum(sizes.values())))
    cand_layer, cand_score = [], []
    for k, v in scores.items():
        order = np.argsort(v, kind="stable")[:-1]  # each layer's best channel is never a candidate
        cand_layer += [k] * len(order)
        cand_score.append(v[order])
    cand_score = np.concatenate(cand_score) if cand_score else np.zeros(0)
    pick = np.argsort(cand_score, kind="stable")[:total]
    out = {k: 0 for k in scores}
    for i in pick:
        out[cand_layer[i]] += 1
    return out


def allocate(scores: dict[str, np.ndarray], level: float, allocation: str,
             taylor: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Keep vectors per layer: the lowest-scoring channels go. `taylor_hybrid` takes each layer's count from a
    global Taylor threshold and ranks inside the layer by the method's own score."""
    if allocation == "taylor_hybrid":
        if taylor is None:
            raise ValueError("taylor_hybrid needs Taylor scores")
        counts = n_prune_per_layer(taylor, level, "global")
    else:
        counts = n_prune_per_layer(scores, level, allocation)
    keep = {}
    for k, v in scores.items():
        kk = np.ones(len(v), bool)
        kk[np.argsort(v, kind="stable")[:counts[k]]] = False
        keep[k] = kk
    return keep
