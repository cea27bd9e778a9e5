"""The metrics stage: METHOD §2–4 over a run store, written to `/metrics` and `/structure`.

Layer moments are chunked dask reductions over `/layers/<layer>/local` (threaded in-process; with a cluster each
layer is one task and its reduction runs inside it); everything after that works on C×C matrices.
Each layer's results are written to `/metrics_parts/<layer>` as soon as they exist, so a killed run resumes at the
first unfinished layer; `/metrics` is assembled from the parts at the end.

The gradient-geometry pass (METHOD §4, with `structure`) is split the same way: one unit per batch of
`GEOMETRY_UNIT_IMAGES` calibration images, each writing its float64 sums for every layer to
`/metrics_parts/geometry/<batch>`; `finish` adds them and computes grad_cos. Whether the pass runs is decided in
`prepare` and recorded on `/metrics_parts/geometry` (a model without gradients, or one the store cannot rebuild,
skips it with the reason).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import xarray as xr

from .. import moments, store
from ..errors import ChanaxisError
from ..estimators import local, peers, ranks, structure, target
from ..estimators.stats import RHO_MAX, Moments
from ..params import Params, param
from ..progress import progress_bar
from ..stage import Context, Stage, Unit, api, run_stage

STAGES = ("local", "target", "structure")
# calibration images per gradient-geometry unit (a multiple of geometry.FORWARD_BATCH, so the forward passes are
# those of a single pass and the sums differ only in the order they are added)
GEOMETRY_UNIT_IMAGES = 256
LOCAL_VARS = ("signal_power", "input_capture", "weight_norm_sq", "magnitude", "peer_overlap", "peer_r2_full",
              "peer_r2_top8", "hull_size", "hull_score")
TARGET_VARS = ("task_info", "redundancy_t", "synergy", "unique_t")
# metrics entering the alignment (Spearman) matrices, local axis first
ALIGN_LOCAL = ("input_capture", "peer_overlap", "weight_norm_sq", "peer_r2_full", "peer_r2_top8", "hull_score")
ALIGN_TARGET = ("task_info", "redundancy_t", "synergy", "unique_t")
UNITS = {
    "signal_power": ("activation^2", "Var(Y_i) of the pre-norm output over local samples"),
    "input_capture": ("nats", "1/2 log(1 + J_i / sigma0^2), sigma0^2 = median J over the layer"),
    "weight_norm_sq": ("weight^2", "||w_i||^2"),
    "magnitude": ("weight", "||w_i||_2"),
    "peer_overlap": ("nats", "(1/C) sum_{j!=i} -1/2 log(1 - rho_ij^2)"),
    "peer_r2_full": ("1", "E_i(all other channels), ridge lambda"),
    "peer_r2_top8": ("1", "E_i(8 peers with largest |rho_ij|), ridge lambda"),
    "hull_size": ("1", "greedy forward selection until E_i(H) >= (1-eps) E_full or |H| = max"),
    "hull_score": ("1", "E_full / max(1, |H_i|)"),
    "task_info": ("nats", "max(0, -1/2 log(1 - rho_iT^2))"),
    "redundancy_t": ("nats", "mean MMI RedT(i,j) = min(I(T;Y_i), I(T;Y_j)) over the candidates"),
    "synergy": ("nats", "mean of the largest target-excess Syn(i,j) among the candidates"),
    "unique_t": ("nats", "max(0, I(T;Y_i) - redundancy_t)"),
    "grad_cos": ("1", "|cos(Sigma_X w, g_T)|, Gaussian linear analysis"),
}


# --------------------------------------------------------------------------- one layer
def layer_metrics(m: Moments, weight: np.ndarray, only: Iterable[str], p: dict) -> dict[str, np.ndarray]:
    """All per-channel metrics of one layer from its moments and filters."""
    out: dict[str, np.ndarray] = {}
    out["dead"] = m.dead
    rho = m.rho_yy(RHO_MAX)
    if "local" in only:
        J = local.signal_power(m)
        ix, sigma0 = local.input_capture(J)
        out.update(signal_power=J, input_capture=ix, weight_norm_sq=local.weight_norm_sq(weight),
                   magnitude=local.magnitude(weight), peer_overlap=local.peer_overlap(rho))
        C = rho.copy()
        np.fill_diagonal(C, 1.0)
        e_full = peers.peer_r2_full(C, p["lam"])
        hulls = peers.hull_all(C, eps=p["hull_eps"], max_size=p["hull_max"], lam=p["lam"], e_full=e_full)
        out.update(peer_r2_full=e_full, peer_r2_top8=peers.peer_r2_topk(C, 8, p["lam"]),
                   hull_size=hulls.size.astype(np.int64), hull_score=hulls.score,
                   hull_members=_pad(hulls.members, p["hull_max"]))
        out["top8_peers"] = _pad(ranks.top_by_abs(rho, 8), 8)
        out["_sigma0_sq"] = np.asarray(sigma0)
    if "target" in only and not m.target_defined:
        undefined = np.full(m.cov_yy.shape[0], np.nan)  # said, not guessed: no target variance, no target metric
        out.update(task_info=undefined, redundancy_t=undefined.copy(), synergy=undefined.copy(),
                   unique_t=undefined.copy())
    elif "target" in only:
        tp = target.target_pairs(m, n_candidates=p["n_candidates"], n_top_syn=p["n_top_syn"])
        out.update(task_info=tp.task_info, redundancy_t=tp.redundancy_t, synergy=tp.synergy, unique_t=tp.unique_t)
        out["_tp"] = tp
    return out


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(a, np.int64)
    if a.shape[1] >= width:
        return a[:, :width]
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), -1, np.int64)], axis=1)


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class MetricsParams(Params):
    only: tuple[str, ...] = param(STAGES, "metric groups to compute (structure needs both axes)", choices=STAGES)
    lam: float = param(1e-3, "ridge lambda of the peer explanation E_i on standardised channels (METHOD §3)",
                       ge=0)
    hull_eps: float = param(0.05, "hull stops when E_i(H) >= (1 - eps) E_full", ge=0, lt=1)
    hull_max: int = param(10, "largest hull size", "channels", ge=1)
    n_candidates: int = param(50, "pair candidates per channel for RedT and Syn (METHOD §2)", "channels", ge=1)
    n_top_syn: int = param(10, "largest Syn(i,j) averaged into synergy", "pairs", ge=1)
    k_clusters: int = param(4, "k-means groups per axis and layer (METHOD §4)", "groups", ge=2)
    n_init: int = param(10, "k-means restarts", ge=1)
    n_perm: int = param(200, "label permutations of the ARI null", ge=1)
    keep_frac: float = param(0.10, "strongest edges kept in the modularity graphs", "fraction", gt=0, le=1)
    n_null: int = param(5, "degree-preserving rewired nulls per modularity", "graphs", ge=1)
    modularity_max_channels: int = param(1024, "channels (seeded subset) entering a layer's modularity graphs",
                                         "channels", ge=4)
    modularity_backend: str = param("igraph", "greedy-modularity implementation", choices=structure.BACKENDS)
    n_triplets: int = param(2000, "triplets sampled for S3/S2 per layer", "triplets", ge=1)
    geometry_images: int = param(1024, "calibration images of the gradient-geometry pass (grad_cos)", "images",
                                 ge=1)
    seed: int = param(0, "seed of k-means, nulls, channel subsets and triplet sampling")

    def validate(self) -> None:
        if "structure" in self.only and not {"local", "target"} <= set(self.only):
            object.__setattr__(self, "only", tuple(dict.fromkeys(("local", "target") + self.only)))


class MetricsStage(Stage):
    """The two axes (METHOD §2–3), one unit per layer; with `structure`, one gradient-geometry unit (§4) per batch
    of `GEOMETRY_UNIT_IMAGES` calibration images; then the structure analyses and grad_cos in `finish`.

    With a cluster (`Context(scheduler=…)`/`workers=N`) each unit is one task; a layer's reduction stays local."""

    name = "metrics"
    needs = ("capture",)
    Params = MetricsParams
    presets = {"quick": MetricsParams(n_null=2, n_perm=100, n_triplets=1000, geometry_images=512),
               "paper": MetricsParams()}
    help = "compute the local/target channel metrics and structure analyses of a run"
    outputs = {
        "metrics": {k: (("unit",), UNITS[k][0]) for k in LOCAL_VARS + TARGET_VARS},
        "structure": {"spearman": (("layer", "metric", "metric2"), "1"), "ari": (("layer",), "1"),
                      "q_r": (("layer",), "1"), "q_s": (("layer",), "1"), "s3_s2": (("layer",), "1")},
    }

    def config(self) -> dict:
        p = self.params.to_dict()
        return {"only": p.pop("only"), **p}

    def prepare(self, run, ctx: Context) -> None:
        grp = store.open_group(run, mode="r+")
        if store.stage_state(grp, "capture") != "done":
            raise ChanaxisError(f"'{run}' has no finished capture; run `chanaxis capture MODEL --dataset D --out "
                                f"{run}` first (rerun it to resume)")
        cfg = self.config()
        store.check_stage_config(grp, self.name, cfg, bool(ctx.inputs.get("overwrite")), f"metrics {run}",
                                 clear=(store.METRICS_PARTS, store.METRICS, store.STRUCTURE))
        store.set_stage_config(grp, self.name, cfg)
        store.set_status(grp, self.name, "running")
        if "structure" in self.params.only:
            _plan_geometry(run, grp, self.params.to_dict(), ctx)

    def units(self, run) -> list[Unit]:
        grp = store.open_group(run)
        todo = [Unit(f"layer/{name}", name) for name in _layers(grp)
                if not (store.metrics_part(name) in grp and grp[store.metrics_part(name)].attrs.get("done"))]
        if "structure" in self.params.only:
            todo += [Unit(f"geometry/{b}", ("geometry", b, lo, hi)) for b, lo, hi in _geometry_batches(grp)
                     if not _geometry_done(grp, b)]
        return todo

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        if unit.key.startswith("geometry/"):
            return self._geometry_unit(run, unit, ctx)
        name = unit.data
        grp = store.open_group(run, mode="r+")
        m = moments.compute(run, name, scheduler=ctx.memo(("scheduler",), lambda: _scheduler(ctx)))
        weight = np.asarray(grp[store.layer_array(name, "weight")][...], np.float64)
        res = layer_metrics(m, weight, self.params.only, self.params.to_dict())
        # kept in memory for `finish` in this process (no read-back); another process reads the part
        ctx.memo(("metrics", str(run)), dict)[name] = _write_part(grp, name, res, m)

    def _geometry_unit(self, run, unit: Unit, ctx: Context) -> None:
        """One batch of calibration images through the model: every layer's float64 sums, then the done flag."""
        from ..geometry import geometry_partial
        _, b, lo, hi = unit.data
        grp = store.open_group(run, mode="r+")
        sums = geometry_partial(run, grp, _layers(grp), ctx.model(run), lo, hi, loader_for=ctx.loader)
        node = store.geometry_part(b)
        if node in grp:
            del grp[node]
        g = grp.require_group(node)
        g.attrs.update({"lo": lo, "hi": hi})
        # one dimension per layer: open_run reads the node as a dataset, where sizes must agree per dimension
        store.write_many([(store.new_array(g, name, v.shape, [f"sums_{name}"], "float64"), Ellipsis, v)
                          for name, v in sums.items()])
        g.attrs["done"] = True  # last: the batch counts only once its sums are on disk
        ctx.memo(("metrics_geometry", str(run)), dict)[b] = sums

    def finish(self, run, ctx: Context) -> str:
        grp = store.open_group(run, mode="r+")
        p = self.params.to_dict()
        only = self.params.only
        layers = _layers(grp)
        have = ctx.memo(("metrics", str(run)), dict)
        results = {name: have[name] if name in have else _read_part(run, name) for name in layers}
        ctx.forget("metrics")
        ds = _assemble(grp, layers, results)
        geometry, why = None, "not asked (only without structure)"
        with progress_bar(ctx.progress) as bar:
            if "structure" in only:
                geometry, why = _geometry(run, grp, layers, ctx)
                if geometry is not None:
                    ds["grad_cos"] = ("unit", np.concatenate([geometry[l] for l in layers]))
                    ds["grad_cos"].attrs = {"units": UNITS["grad_cos"][0], "estimator": UNITS["grad_cos"][1]}
                struct = _structure(results, grp, layers, ds, p, bar)
                ds["cluster_local"] = ("unit", struct.pop("_cluster_local"))
                ds["cluster_target"] = ("unit", struct.pop("_cluster_target"))
                if geometry is not None:
                    struct["grad_cos"] = ("layer", [float(np.nanmean(geometry[l])) if np.isfinite(geometry[l]).any()
                                                    else np.nan for l in layers],
                                          {"units": "1", "description": "layer mean of grad_cos"})
        params = {k: v for k, v in p.items() if k != "only"}
        target_note = "logit margin, match mode"
        if "task_info" in ds and not np.isfinite(ds["task_info"].values).any():
            target_note = ("undefined: the logit margin T does not vary over the calibration images (a one-output "
                           "model or a constant margin), so every target metric is NaN; local metrics are exact")
        ds.attrs.update({"parameters": params, "rho_max": RHO_MAX, "var_floor": 1e-12, "target": target_note,
                         "geometry": why})
        store.write_dataset(grp, store.METRICS, ds)
        if "structure" in only:
            sds = xr.Dataset(struct, coords={"layer": layers, "metric": list(ALIGN_LOCAL + ALIGN_TARGET),
                                             "metric2": list(ALIGN_LOCAL + ALIGN_TARGET)})
            sds.attrs.update({"parameters": params})
            store.write_dataset(grp, store.STRUCTURE, sds)
        store.set_status(grp, self.name, "done")
        return str(run)


def metrics(run, *, scheduler: str | None = None, workers: int | None = None, progress: bool = True, model=None,
            device: str = "cpu", overwrite: bool = False, loader_workers: int | None = None, **params) -> str:
    """Fill `/metrics` and `/structure` of the run store at `run` (resumable); returns its path. `model`: the
    store's model when the store cannot rebuild it (an nn.Module); the gradient-geometry pass runs on it."""
    stage = MetricsStage(**params)
    ctx = Context(device=device, progress=progress, model=model, scheduler=scheduler, workers=workers,
                  loader_workers=loader_workers,
                  overwrite=overwrite)
    return run_stage(stage, run, ctx)


api(MetricsStage, metrics)


def _layers(grp) -> list[str]:
    return [str(x) for x in grp[f"{store.GRAPH}/layer"][...]]


def _scheduler(ctx: Context):
    """The dask scheduler of a layer's chunked reductions: always local. With a cluster (`scheduler=`/`workers=`)
    each layer is already one task on a worker, so the reduction runs serially inside it; in-process it uses
    threads."""
    from ..distributed import in_worker
    return "synchronous" if in_worker() else "threads"


def _write_part(grp, name, res, m):
    slot_dim = {"hull_members": "hull_slot", "top8_peers": "peer_slot"}
    data = {k: (("channel", slot_dim[k]) if k in slot_dim else "channel", np.asarray(v))
            for k, v in res.items() if not k.startswith("_")}
    ds = xr.Dataset(data)
    tp = res.get("_tp")
    if tp is not None:  # pair-level results the structure analyses need
        ds["candidates"] = (("channel", "candidate"), np.asarray(tp.candidates, np.int64))
        ds["syn"] = (("channel", "candidate"), tp.syn)
        ds["syn_partners"] = (("channel", "partner"), np.asarray(tp.syn_partners, np.int64))
    if "_sigma0_sq" in res:
        ds.attrs["sigma0_sq"] = float(res["_sigma0_sq"])
    # moments kept so structure/replacement never recompute them
    mom = moments.to_dataset(m)
    ds = ds.assign(mom.data_vars)
    ds.attrs.update({**mom.attrs, "done": True})
    store.write_dataset(grp, store.metrics_part(name), ds)
    return ds  # what a resumed run reads back from the part (no round trip through the disk here)


def _read_part(run, name) -> xr.Dataset:
    return store.read_dataset(run, store.metrics_part(name))


def _assemble(grp, layers, results) -> xr.Dataset:
    cols: dict[str, list] = {}
    unit_layer, unit_channel, unit_group, unit_depth = [], [], [], []
    for d, name in enumerate(layers):
        part = results[name]
        c = part.sizes["channel"]
        unit_layer += [name] * c
        unit_channel.append(np.arange(c))
        unit_group.append(np.asarray(grp[store.layer_array(name, "group")][...]))
        unit_depth.append(np.full(c, d))
        for k, v in part.data_vars.items():
            if k in ("cov_yy", "mean_y", "cov_yt", "candidates", "syn", "syn_partners"):
                continue
            cols.setdefault(k, []).append(v.values)
    ds = xr.Dataset(coords={"layer": ("unit", np.asarray(unit_layer, dtype=object)),
                            "channel": ("unit", np.concatenate(unit_channel)),
                            "group": ("unit", np.concatenate(unit_group)),
                            "depth": ("unit", np.concatenate(unit_depth))})
    for k, parts in cols.items():
        arr = np.concatenate(parts)
        dims = ("unit",) if arr.ndim == 1 else ("unit", "hull_slot" if k == "hull_members" else "peer_slot")
        ds[k] = (dims, arr)
        if k in UNITS:
            ds[k].attrs = {"units": UNITS[k][0], "estimator": UNITS[k][1]}
    if "hull_members" in ds:
        ds["hull_members"].attrs = {"description": "hull peers (channel index within the layer), -1 padded"}
    if "top8_peers" in ds:
        ds["top8_peers"].attrs = {"description": "8 peers with largest |rho| (channel index), -1 padded"}
    ds["dead"].attrs = {"description": "zero variance over the local samples: metrics take defined values"}
    return ds


# --------------------------------------------------------------------------- structure (METHOD §4)
def _structure(parts, grp, layers, ds, p, bar) -> dict:
    names = list(ALIGN_LOCAL + ALIGN_TARGET)
    n_layers = len(layers)
    sp = np.full((n_layers, len(names), len(names)), np.nan)
    tables = []
    out = {k: np.full(n_layers, np.nan) for k in ("ari", "ari_null_mean", "ari_null_sd", "ari_p", "q_r",
                                                  "q_r_null_mean", "q_r_null_sd", "q_s", "q_s_null_mean",
                                                  "q_s_null_sd", "s3_s2", "modularity_channels")}
    cl_local, cl_target = [], []
    task = bar.add_task("structure", total=n_layers)
    for li, name in enumerate(layers):
        sel = ds.layer.values == name
        table = {k: _settle(ds[k].values[sel]) for k in names}
        tables.append(table)
        if sel.sum() >= 3:
            sp[li] = structure.spearman_matrix(table).rho
        part = parts[name]
        c = int(sel.sum())
        k = min(p["k_clusters"], c)
        a = structure.kmeans_groups(structure.local_features(table["input_capture"], table["peer_overlap"]), k,
                                    p["n_init"], p["seed"])
        target_ok = "candidates" in part  # the layer's target metrics are defined (T varies)
        b = structure.kmeans_groups(structure.target_features(table["task_info"], table["synergy"]), k,
                                    p["n_init"], p["seed"]) if target_ok else np.full(c, -1)
        cl_local.append(a)
        cl_target.append(b)
        if target_ok:
            r = structure.ari_with_null(a, b, n_perm=p["n_perm"], seed=p["seed"])
            out["ari"][li], out["ari_null_mean"][li], out["ari_null_sd"][li], out["ari_p"][li] = r
        m = moments.from_dataset(part)
        # modularity on at most modularity_max_channels channels (chosen: greedy modularity is super-linear, a
        # 3072-channel graph keeps 470k edges, ~7 s per graph and per null in igraph); the subset is seeded and recorded
        keep = np.arange(c)
        if c > p["modularity_max_channels"]:
            keep = np.sort(np.random.default_rng(p["seed"]).choice(c, p["modularity_max_channels"], replace=False))
        out["modularity_channels"][li] = len(keep)
        R = structure_pairwise_mi(m)[np.ix_(keep, keep)]
        if len(keep) >= 4:
            kw = dict(keep_frac=p["keep_frac"], seed=p["seed"], n_null=p["n_null"], backend=p["modularity_backend"])
            qr = structure.modularity(R, **kw)
            out["q_r"][li], out["q_r_null_mean"][li], out["q_r_null_sd"][li] = qr[:3]
            if target_ok:  # synergy graphs and triplets need the target; NaN (undefined) otherwise, never 0
                S = _syn_matrix(part, c)[np.ix_(keep, keep)]
                qs = structure.modularity(np.abs(S), **kw)
                out["q_s"][li], out["q_s_null_mean"][li], out["q_s_null_sd"][li] = qs[:3]
                out["s3_s2"][li] = structure.triplet_s3_s2(m, part["syn_partners"].values,
                                                           n_triplets=p["n_triplets"], seed=p["seed"]).s3_s2
        bar.update(task, advance=1)
    mean, sd = structure.layer_mean_sd(sp)
    pooled = structure.pooled_rank_spearman(tables)
    labels, prop, n_edges = _propagation(grp, layers, ds)
    res = {
        "spearman": (("layer", "metric", "metric2"), sp,
                     {"units": "1", "description": "within-layer Spearman between metrics"}),
        "spearman_mean": (("metric", "metric2"), mean, {"units": "1", "description": "mean over layers"}),
        "spearman_sd": (("metric", "metric2"), sd, {"units": "1", "description": "s.d. over layers"}),
        "spearman_pooled": (("metric", "metric2"), pooled.rho, {
            "units": "1", "description": "Spearman of within-layer percentile ranks pooled over layers"}),
        "propagation": ("axis_pair", prop, {
            "units": "1", "edges": n_edges, "description": "mean over producer->consumer edges of Spearman("
                                                           "influence-weighted upstream metric, downstream metric)"}),
        "axis_pair": ("axis_pair", labels),
        "_cluster_local": np.concatenate(cl_local),
        "_cluster_target": np.concatenate(cl_target),
    }
    res.update({k: ("layer", v, {"units": "1"})
                for k, v in out.items()})
    return res


def _settle(x: np.ndarray, digits: int = 9) -> np.ndarray:
    """Round to `digits` significant digits of the layer's scale: values that differ only by the summation order
    of the chunked reductions become exact ties, so ranks (Spearman, k-means) do not depend on the chunking."""
    x = np.asarray(x, np.float64)
    scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
    if not scale:
        return x
    q = scale * 10.0 ** -digits
    return np.round(x / q) * q


def structure_pairwise_mi(m: Moments) -> np.ndarray:
    return target.pairwise_mi(m.rho_yy(RHO_MAX), RHO_MAX)


def _syn_matrix(part, c) -> np.ndarray:
    """|Syn(i,j)| over each channel's candidate pairs, symmetrised by the larger of the two directions."""
    S = np.zeros((c, c))
    cand, syn = part["candidates"].values, part["syn"].values
    if cand.size:
        rows = np.repeat(np.arange(c), cand.shape[1])
        np.maximum.at(S, (rows, cand.reshape(-1)), np.abs(syn.reshape(-1)))
    return np.maximum(S, S.T)


def _propagation(grp, layers, ds):
    """METHOD §4 (chosen): influence A_ji = ||W_{j,i}||_1 sigma_i along every producer → analysed consumer edge."""
    pairs = [("input_capture", "input_capture"), ("task_info", "task_info"), ("input_capture", "task_info"),
             ("task_info", "input_capture")]
    labels = ["local->local", "target->target", "local->target", "target->local"]
    src = [str(x) for x in grp[f"{store.GRAPH}/edge_src"][...]]
    dst = [str(x) for x in grp[f"{store.GRAPH}/edge_dst"][...]]
    by_layer = {n: ds.layer.values == n for n in layers}
    rhos = []
    for s, d in zip(src, dst):
        if not s or d not in by_layer:
            continue
        gd = grp[store.layer_node(d)].attrs
        c_up = int(by_layer[s].sum())
        if gd["c_in"] != c_up:
            continue
        W = np.asarray(grp[store.layer_array(d, "weight")][...], np.float64).reshape(gd["c_out"], gd["c_in"] // gd["groups"],
                                                                           -1)
        sigma = np.sqrt(ds["signal_power"].values[by_layer[s]])
        A = structure.influence(W, sigma, groups=gd["groups"])
        up = {k: ds[k].values[by_layer[s]] for k in ("input_capture", "task_info")}
        down = {k: ds[k].values[by_layer[d]] for k in ("input_capture", "task_info")}
        pr = structure.propagation(up, down, A)
        rhos.append([pr.rho[pr.names_up.index(u), pr.names_down.index(v)] for u, v in pairs])
    with warnings.catch_warnings():  # an undefined axis leaves all-NaN columns: their mean is NaN, said as such
        warnings.simplefilter("ignore", RuntimeWarning)
        rho = np.nanmean(np.asarray(rhos), axis=0) if rhos else np.full(4, np.nan)
    return labels, rho, len(rhos)


# --------------------------------------------------------------------------- gradient geometry (METHOD §4)
def _plan_geometry(run, grp, p, ctx: Context) -> None:
    """Whether the geometry units run, recorded on /metrics_parts/geometry (attrs `status`, `images`,
    `unit_images`): on the study's model and device; skipped, with the reason, for a model without gradients (ONNX)
    or one the store cannot rebuild (a Python nn.Module not passed again). Sums of another batching are dropped."""
    from ..geometry import geometry_images, has_gradients
    try:
        why = "computed" if has_gradients(ctx.model(run)) else "skipped (model without gradients)"
    except ChanaxisError as e:
        why = f"skipped ({e})"
    plan = {"images": geometry_images(grp, p), "unit_images": GEOMETRY_UNIT_IMAGES}
    node = store.geometry_part()
    if node in grp and any(grp[node].attrs.get(k) != v for k, v in plan.items()):
        del grp[node]
    grp.require_group(node).attrs.update({**plan, "status": why})


def _geometry_batches(grp) -> list[tuple[int, int, int]]:
    """(batch, lo, hi) of every geometry unit; none when the pass is skipped (or not planned)."""
    node = store.geometry_part()
    a = grp[node].attrs if node in grp else {}
    if a.get("status") != "computed":
        return []
    n, step = int(a["images"]), int(a["unit_images"])
    return [(b, lo, min(n, lo + step)) for b, lo in enumerate(range(0, n, step))]


def _geometry_done(grp, b: int) -> bool:
    node = store.geometry_part(b)
    return node in grp and bool(grp[node].attrs.get("done"))


def _geometry(run, grp, layers, ctx: Context):
    """(per-layer grad_cos, what was done) from the geometry units' sums, added in batch order."""
    from ..geometry import reduce_sums
    node = store.geometry_part()
    why = grp[node].attrs.get("status", "skipped (not planned)") if node in grp else "skipped (not planned)"
    if why != "computed":
        return None, why
    have = ctx.memo(("metrics_geometry", str(run)), dict)
    batches = _geometry_batches(grp)
    missing = [b for b, _, _ in batches if b not in have and not _geometry_done(grp, b)]
    if missing:
        raise ChanaxisError(f"the gradient-geometry pass of '{run}' has unfinished batches ({len(missing)}); rerun "
                            "the same command to resume")
    parts = []
    for b, _, _ in batches:
        if b in have:
            parts.append(have[b])
        else:
            g = grp[store.geometry_part(b)]
            parts.append({l: np.asarray(g[l][...], np.float64) for l in layers})
    ctx.forget("metrics_geometry")
    return reduce_sums(grp, layers, parts), "computed"
