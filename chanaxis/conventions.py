"""The run store's CF attributes: every variable and coordinate of every node gets `long_name` and `units`, and an
estimate of a METHOD.md quantity also `method_section` (the section that defines it).

One table, applied where the store is written (`chanaxis.store.write_dataset`, `new_array`, `new_arrays`), so no
writer can forget it. The table is the truth for these three attributes: what a writer set itself (`description`,
`estimator`, …) stays beside them. Units follow CF where CF has one (`"1"`: dimensionless — indices, counts,
booleans, correlations, fractions, R², ARI; `%`); the domain's own units are kept where CF has none (`nats`, `MACs`,
`logit`, `activation` and `weight`: the arbitrary scale of a layer's output and filters; `epoch`).

A name the table does not know gets nothing: `tests/test_store_conventions.py` fails on any variable without
`long_name` and `units`, so a new variable is added here, with its meaning, when it is added to the store.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import NamedTuple


class Convention(NamedTuple):
    long_name: str
    units: str
    section: str | None = None   # METHOD.md section of the quantity (None: bookkeeping, not an estimate)


SECTIONS = {
    1: "METHOD.md §1 What a channel sample is",
    2: "METHOD.md §2 Local axis",
    3: "METHOD.md §3 Target axis",
    4: "METHOD.md §4 Structure",
    5: "METHOD.md §5 Training trajectory",
    6: "METHOD.md §6 Lesions and peer replacement",
    7: "METHOD.md §7 FLOPs-matched pruning",
}


def C(long_name: str, units: str, section: int | None = None) -> Convention:
    return Convention(long_name, units, SECTIONS[section] if section else None)


# ------------------------------------------------------------------ names with one meaning wherever they appear
NAMES: dict[str, Convention] = {
    # coordinates and labels
    "layer": C("layer name", "1"),
    "channel": C("output channel index within the layer", "1"),
    "group": C("coupling group (channels tied by residual adds share one)", "1"),
    "depth": C("layer depth (position in the analysed layers, 0 = first)", "1"),
    "metric": C("channel metric", "1"),
    "metric2": C("channel metric (second axis of the matrix)", "1"),
    "image": C("calibration image number", "1"),
    "checkpoint": C("training epoch of the checkpoint (0 = initialisation)", "epoch", 5),
    "chunk_crc": C("CRC-32 checksum of each chunk as written", "1"),
    "chunk_done": C("chunk written (done flag)", "1"),
    # /samples (METHOD §1)
    "dataset_index": C("index of the calibration image in the dataset split", "1", 1),
    "label": C("class label index", "1"),
    "margin": C("logit margin T = z[label] - max_{c!=label} z[c]", "logit", 1),
    "correct": C("classified correctly (argmax of the logits is the label)", "1"),
    "logits": C("model logits", "logit"),
    # /layers/<layer> (METHOD §1)
    "local": C("pre-normalisation layer output at the sampled spatial positions", "activation", 1),
    "gap": C("per-image global average of the pre-normalisation layer output", "activation", 1),
    "weight": C("layer filters, one row per output channel", "weight"),
    "position": C("flat spatial index h*W+w of the sample", "1", 1),
    "image_of_sample": C("calibration image number of the sample", "1", 1),
    # /graph
    "kind": C("layer kind", "1"),
    "c_in": C("input channels", "1"),
    "c_out": C("output channels", "1"),
    "groups": C("convolution groups", "1"),
    "kernel_h": C("kernel height", "1"),
    "kernel_w": C("kernel width", "1"),
    "stride": C("stride", "1"),
    "out_h": C("output height", "1"),
    "out_w": C("output width", "1"),
    "macs": C("multiply-accumulates per image", "MACs", 7),
    "norm": C("normalisation following the layer", "1"),
    "edge_src": C("producer layer of the edge", "1"),
    "edge_dst": C("consumer layer of the edge", "1"),
    # /metrics: local axis (METHOD §2)
    "signal_power": C("signal power J_i = Var(Y_i)", "activation^2", 2),
    "input_capture": C("input capture I_X", "nats", 2),
    "weight_norm_sq": C("squared filter norm ||w_i||^2", "weight^2", 2),
    "magnitude": C("filter norm ||w_i||_2", "weight", 2),
    "peer_overlap": C("peer overlap R_X", "nats", 2),
    "peer_r2_full": C("peer explanation R^2 from all other channels", "1", 2),
    "peer_r2_top8": C("peer explanation R^2 from the 8 most correlated peers", "1", 2),
    "hull_size": C("compact-hull size |H_i|", "1", 2),
    "hull_score": C("compact-hull score E_full / max(1, |H_i|)", "1", 2),
    "hull_members": C("hull peers (channel index within the layer, -1 padded)", "1", 2),
    "top8_peers": C("8 peers of largest |rho| (channel index within the layer, -1 padded)", "1", 2),
    "dead": C("dead channel (zero variance over the local samples)", "1", 2),
    # /metrics: target axis (METHOD §3)
    "task_info": C("task information I(T;Y_i)", "nats", 3),
    "redundancy_t": C("target redundancy RedT (mean over the candidates)", "nats", 3),
    "synergy": C("target synergy Syn (mean of the largest over the candidates)", "nats", 3),
    "unique_t": C("unique target information max(0, I(T;Y_i) - redundancy_t)", "nats", 3),
    # /metrics: structure per channel (METHOD §4)
    "grad_cos": C("gradient geometry |cos(Sigma_X w, g_T)|", "1", 4),
    "cluster_local": C("k-means cluster on the local features", "1", 4),
    "cluster_target": C("k-means cluster on the target features", "1", 4),
    # /structure (METHOD §4)
    "spearman": C("within-layer Spearman rho between metrics", "1", 4),
    "spearman_mean": C("within-layer Spearman rho between metrics, mean over layers", "1", 4),
    "spearman_sd": C("within-layer Spearman rho between metrics, s.d. over layers", "1", 4),
    "spearman_pooled": C("Spearman rho of within-layer percentile ranks pooled over layers", "1", 4),
    "propagation": C("cross-layer propagation Spearman rho (mean over producer->consumer edges)", "1", 4),
    "axis_pair": C("upstream->downstream axis pair", "1", 4),
    "ari": C("adjusted Rand index between the local and target groupings", "1", 4),
    "ari_null_mean": C("adjusted Rand index, label-permutation null mean", "1", 4),
    "ari_null_sd": C("adjusted Rand index, label-permutation null s.d.", "1", 4),
    "ari_p": C("adjusted Rand index, permutation p-value", "1", 4),
    "q_r": C("modularity Q_R of the peer-information graph", "1", 4),
    "q_r_null_mean": C("modularity Q_R, rewired-null mean", "1", 4),
    "q_r_null_sd": C("modularity Q_R, rewired-null s.d.", "1", 4),
    "q_s": C("modularity Q_S of the synergy graph", "1", 4),
    "q_s_null_mean": C("modularity Q_S, rewired-null mean", "1", 4),
    "q_s_null_sd": C("modularity Q_S, rewired-null s.d.", "1", 4),
    "s3_s2": C("triplet to pair synergy ratio S3/S2", "1", 4),
    "modularity_channels": C("channels entering the modularity graphs", "1", 4),
    # /trajectory (METHOD §5)
    "local_metric": C("local-axis metric", "1", 5),
    "target_metric": C("target-axis metric", "1", 5),
    "cross_spearman": C("within-layer Spearman rho of a local-axis vs a target-axis metric", "1", 5),
    "cross_spearman_mean": C("within-layer Spearman rho of a local-axis vs a target-axis metric, layer mean", "1", 5),
    "coupling_ix_it": C("coupling of the axes: within-layer Spearman rho of I_X vs I(T;Y)", "1", 5),
    "coupling_ix_it_mean": C("coupling of the axes: within-layer Spearman rho of I_X vs I(T;Y), layer mean",
                             "1", 5),
    "rank_stability": C("rank stability: within-layer Spearman rho vs the last checkpoint", "1", 5),
    "rank_stability_mean": C("rank stability: within-layer Spearman rho vs the last checkpoint, layer mean",
                             "1", 5),
    "grad_cos_mean": C("gradient geometry |cos|, mean over layers", "1", 5),
    "eval_acc": C("accuracy on the evaluation split", "%", 5),
    "eval_loss": C("mean cross-entropy on the evaluation split", "nats", 5),
    "calibration_acc": C("accuracy on the calibration images", "%", 5),
    "calibration_margin": C("mean logit margin T on the calibration images", "logit", 5),
    # /lesion (METHOD §6)
    "damage_loss": C("lesion damage: increase of mean cross-entropy", "nats", 6),
    "damage_acc": C("lesion damage: accuracy lost", "%", 6),
    "replaced_damage": C("damage with the channel replaced from its hull peers", "nats", 6),
    "replaced_damage_top8": C("damage with the channel replaced from its 8 most correlated peers", "nats", 6),
    "mean_ablation_damage": C("damage with the channel replaced by its calibration mean (control)", "nats", 6),
    "random_peer_damage": C("damage with the channel replaced from random peers (control)", "nats", 6),
    "recovery": C("recovery by hull-peer replacement", "1", 6),
    "recovery_top8": C("recovery by top-8-peer replacement", "1", 6),
    "recovery_mean_ablation": C("recovery by mean ablation (control)", "1", 6),
    "recovery_random_peer": C("recovery by random-peer replacement (control)", "1", 6),
    "metrics_unit": C("row of the channel in /metrics", "1"),
    "layer_index": C("layer number", "1"),
    "layer_done": C("layer finished (done flag)", "1"),
    "run_mode": C("how the layer's lesions ran", "1"),
    "block_layer": C("layer number of the block", "1"),
    "block_done": C("block finished (done flag)", "1"),
    # /lesion/predictors (METHOD §6)
    "n_units": C("lesioned channels of the layer", "1", 6),
    "spearman_layer_mean": C("Spearman rho of score vs -damage, mean over layers", "1", 6),
    "within_bin": C("within-bin Spearman rho of score vs -damage (bins of task_info)", "1", 6),
    "within_bin_pooled": C("within-bin Spearman rho of score vs -damage, pooled over layers", "1", 6),
    "within_bin_n_bins": C("bins that entered the within-bin Spearman", "1", 6),
    "r2_scope": C("scope of the incremental R^2", "1", 6),
    "r2_base": C("R^2 of damage on (I_X, I(T;Y))", "1", 6),
    "r2_full": C("R^2 of damage on (I_X, I(T;Y)) and peer support", "1", 6),
    "delta_r2": C("incremental R^2 of peer support", "1", 6),
    "delta_r2_p": C("incremental R^2 of peer support, F-test p-value", "1", 6),
    # /pruning (METHOD §7)
    "method": C("pruning method (channel score)", "1", 7),
    "level": C("channel sparsity level", "1", 7),
    "seed": C("random seed", "1", 7),
    "axis": C("axis of the metric (local or target)", "1"),
    "regime": C("accuracy regime (one-shot or fine-tuned)", "1", 7),
    "bound": C("interval bound", "1"),
    "contrast": C("paired contrast", "1", 7),
    "macs_retained": C("MACs retained per image", "MACs", 7),
    "macs_retained_pct": C("MACs retained", "%", 7),
    "macs_reduction": C("MACs reduction 1 - macs_retained / full MACs", "1", 7),
    "channel_sparsity": C("channel sparsity (pruned share of the prunable channels)", "1", 7),
    "acc_oneshot": C("accuracy after one-shot pruning", "%", 7),
    "acc_finetuned": C("accuracy after pruning and fine-tuning", "%", 7),
    "loss": C("mean cross-entropy after one-shot pruning", "nats", 7),
    "loss_finetuned": C("mean cross-entropy after pruning and fine-tuning", "nats", 7),
    "correct_oneshot": C("per-image correctness, one-shot", "1", 7),
    "loss_oneshot_image": C("per-image cross-entropy, one-shot", "nats", 7),
    "correct_finetuned": C("per-image correctness, fine-tuned", "1", 7),
    "loss_finetuned_image": C("per-image cross-entropy, fine-tuned", "nats", 7),
    "correct_base": C("per-image correctness, unpruned", "1", 7),
    "loss_base_image": C("per-image cross-entropy, unpruned", "nats", 7),
    "auc": C("accuracy AUC over the common MACs-reduction interval", "%", 7),
    "auc_mean": C("accuracy AUC over the common MACs-reduction interval, mean over seeds", "%", 7),
    "auc_interval": C("common MACs-reduction interval of the AUC", "1", 7),
    "contrast_diff": C("paired per-seed AUC difference (percentage points)", "%", 7),
    "contrast_mean": C("paired AUC difference (percentage points), mean over seeds", "%", 7),
    "contrast_ci_low": C("paired AUC difference, 95 % bootstrap interval lower bound", "%", 7),
    "contrast_ci_high": C("paired AUC difference, 95 % bootstrap interval upper bound", "%", 7),
    "contrast_resamples": C("what the contrast's interval resamples", "1", 7),
    "best_local": C("best local-axis method", "1", 7),
    "best_target": C("best target-axis method", "1", 7),
    "base_accuracy": C("unpruned accuracy", "%", 7),
    "base_loss": C("unpruned mean cross-entropy", "nats", 7),
    "oneshot_done": C("one-shot cell finished (done flag)", "1"),
    "finetune_done": C("fine-tuned cell finished (done flag)", "1"),
    "taylor": C("Taylor importance sum |w * dL/dw| of the filter", "nats", 7),
    # /metrics_parts/<layer>: the metrics stage's working space (moments and pair results of one layer)
    "mean_y": C("channel mean over the local samples", "activation", 2),
    "cov_yy": C("channel covariance over the local samples", "activation^2", 2),
    "cov_yt": C("covariance of each channel with the target T", "activation logit", 3),
    "candidates": C("candidate partners of the channel (channel index)", "1", 3),
    "syn": C("pair synergy Syn(i,j) with each candidate", "nats", 3),
    "syn_partners": C("top synergy partners (channel index)", "1", 4),
}

# ------------------------------------------------------------------ names whose meaning depends on the node
# node (fnmatch pattern on the node's path) → {name (fnmatch pattern; "{name}" in the long_name is the name)}
NODES: dict[str, dict[str, Convention]] = {
    "samples": {"image": C("calibration image number", "1", 1)},
    "metrics": {"layer": C("layer of the channel", "1"), "channel": C("channel index within the layer", "1"),
                "depth": C("layer depth of the channel (0 = first analysed layer)", "1")},
    "lesion": {"layer": C("layer of the lesioned channel", "1"),
               "channel": C("lesioned channel index within the layer", "1"),
               "depth": C("layer depth of the channel (0 = first analysed layer)", "1")},
    "lesion/predictors": {"spearman": C("Spearman rho of score vs -damage within the layer", "1", 6),
                          "metric": C("predictor (channel metric or pruning score)", "1", 6)},
    "pruning": {"image": C("index of the evaluation image in the evaluation split", "1", 7),
                "layer": C("layer of the channel", "1"), "channel": C("channel index within the layer", "1")},
    "structure": {"grad_cos": C("gradient geometry |cos|, layer mean", "1", 4)},
    "trajectory": {"grad_cos": C("gradient geometry |cos|, layer mean", "1", 5),
                   "metric": C("channel metric whose ranks are compared", "1", 5),
                   "axis": C("axis of the metric (local or target)", "1", 5)},
    "metrics_parts/geometry/*": {"*": C("gradient-geometry float64 partial sums of layer {name} over one batch of "
                                        "calibration images (packed accumulator state)", "mixed", 4)},
}


def lookup(node: str, name: str) -> Convention | None:
    """The convention of variable or coordinate `name` in the node at path `node` ("metrics", "layers/conv1",
    "lesion/predictors"); None when the table does not know it."""
    node = node.strip("/")
    for pattern, table in NODES.items():
        if fnmatchcase(node, pattern):
            if name in table:
                return table[name]
            for npat, conv in table.items():
                if fnmatchcase(name, npat):
                    return conv._replace(long_name=conv.long_name.replace("{name}", name))
    if name in NAMES:
        return NAMES[name]
    if node == "lesion" and name.startswith("block_") and name[len("block_"):] in NAMES:
        base = NAMES[name[len("block_"):]]  # the lesion stage's raw results while it runs (`block_damage_loss`)
        return base._replace(long_name=f"{base.long_name} (raw, per block of channels)")
    return None


def attrs(node: str, name: str, existing: dict | None = None) -> dict:
    """`existing` attrs with the table's `long_name`, `units` (and `method_section`) for `name` in `node`; as
    they were when the table does not know the name."""
    out = dict(existing or {})
    conv = lookup(node, name)
    if conv is None:
        return out
    out["long_name"] = conv.long_name
    out["units"] = conv.units
    if conv.section:
        out["method_section"] = conv.section
    else:
        out.pop("method_section", None)
    return out


def annotate(node: str, ds):
    """`ds` (an xarray.Dataset, changed in place and returned) with every variable's and coordinate's attrs set
    from the table."""
    for name, var in ds.variables.items():
        var.attrs = attrs(node, str(name), var.attrs)
    return ds


def missing(node: str, ds) -> list[str]:
    """Variables and coordinates of `ds` without `long_name` or `units` (what the conventions test fails on)."""
    return [str(k) for k, v in ds.variables.items() if not v.attrs.get("long_name") or "units" not in v.attrs
            or v.attrs["units"] in (None, "")]
