"""Single-channel lesions, peer replacement and the predictor tables (METHOD §6), written to `/lesion`.

One unit per (layer, block of `unit_channels` lesioned channels): the evaluation images go through the layer's prefix
once per unit; then each lesion (and each replacement variant) runs only the suffix, K variants per pass. A unit
writes its block's slice and then its done flag, so a killed run resumes at the unfinished blocks, in any order and
in any process (a cluster spreads one layer's blocks over its workers). Everything a block computes from the whole
layer (the channel choice, the peer sets, the seeded random peer sets) is computed for the whole layer and sliced,
so the values do not depend on the block size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from .. import precision, store
from ..errors import ChanaxisError
from ..evaluation import evaluate, model_forward, outcome_sums, tensor_batches
from ..params import Params, param
from ..stage import Context, Stage, Unit, api, run_stage
from . import predictors as pred
from . import scores as sc
from .common import checked_model, load_eval_images, metrics_layers, metrics_table, require_metrics, strings
from .masks import lesion_variants
from .replace import LAM, layer_moments, random_peer_sets, replacement_matrix, replacer
from .suffix import SuffixRunner

DAMAGE_VARS = ("damage_loss", "damage_acc", "replaced_damage", "replaced_damage_top8", "mean_ablation_damage",
               "random_peer_damage")
REPLACE_KINDS = ("replaced_damage", "replaced_damage_top8", "mean_ablation_damage", "random_peer_damage")
PEER_SUPPORT = ("hull_score", "peer_r2_full")  # (chosen) the peer-support variables of the incremental R²
NOT_PREDICTORS = ("dead", "cluster_local", "cluster_target")
RECOVERY_MIN_DAMAGE = 1e-4


@dataclass(frozen=True)
class LesionParams(Params):
    all_channels: bool = param(False, "lesion every channel of every layer (else a seeded --fraction per layer)",
                               aliases=("--all",))
    fraction: float = param(0.2, "share of each layer's channels lesioned (at least one per layer)", "fraction",
                            gt=0, le=1)
    seed: int = param(0, "seed of the channel choice and of the random-peer control")
    eval_images: int | None = param(1000, "images of the evaluation split (a seeded subset)", "images", ge=1,
                                    none="all images of the evaluation split")
    batch_size: int = param(256, "images × lesion variants per forward pass", "images", ge=1)
    replace: bool = param(True, "also replace each lesioned channel from its peers, with the controls")
    suffix: bool = param(True, "run only the network after the layer per variant (else a full forward each)")
    n_bins: int = param(5, "quantile bins of I(T;Y) for the within-bin Spearman", "bins", ge=1)
    precision: str = param("fp32", "precision of the evaluation passes that feed the results (bf16: autocast, "
                           "torch models only)", choices=("fp32", "bf16"))
    unit_channels: int = param(64, "lesioned channels per unit of work (a layer with more is split into several "
                               "units, which a cluster runs in parallel; rounded up to a multiple of the variants "
                               "per pass); results do not depend on it, and a resumed run keeps the block size it "
                               "started with", "channels", ge=1)


def select_channels(layer, fraction: float, all_channels: bool, seed: int) -> dict[str, np.ndarray]:
    """Per layer (in /metrics order; `layer` is each /metrics row's layer): a seeded random `fraction` of its
    channels (≥ 1), or all of them."""
    layer = strings(layer)
    out = {}
    for d, name in enumerate(dict.fromkeys(layer)):
        c = int((layer == name).sum())
        if all_channels:
            out[name] = np.arange(c)
        else:
            n = max(1, int(round(fraction * c)))
            out[name] = np.sort(np.random.default_rng([seed, d]).choice(c, n, replace=False))
    return out


def ridge_lambda(grp) -> float:
    """The ridge λ the metrics stage used (its `lam`): peer replacement fits with the same one."""
    lam = dict(grp[store.METRICS].attrs.get("parameters") or {}).get("lam")
    if lam is None:
        lam = dict(store.stage_config(grp, "metrics") or {}).get("lam")
    if lam is None:
        raise ChanaxisError("/metrics records no ridge lambda (parameter 'lam'); rerun `chanaxis metrics RUN`")
    return float(lam)


class LesionStage(Stage):
    """Lesions (METHOD §6): one unit per (layer, block of at most `unit_channels` of its chosen channels), each
    silenced, then replaced from each peer set; `finish` assembles /lesion and its predictor tables.
    `ctx.inputs`: optional `overwrite`.

    `unit_channels` only splits the work: it is not part of the stage's config (a rerun with another value is not
    refused) and the final /lesion does not depend on it. While the stage runs, /lesion holds the raw per-block
    results (`block_<variable>`, block × slot), `block_done` per block and `layer_done`/`run_mode` per layer; the
    block size is recorded there (attr `unit_channels`) and a resumed run keeps it."""

    name = "lesion"
    needs = ("metrics",)
    Params = LesionParams
    node = store.LESION
    presets = {"quick": LesionParams(fraction=0.2, eval_images=400),
               "paper": LesionParams(fraction=0.2, eval_images=None)}
    help = ("silence channels one at a time, replace them from their peers, and test which metric predicts the "
            "damage (METHOD §6)")

    def config(self, grp) -> dict:
        p = self.params
        return {"all": p.all_channels, "fraction": 1.0 if p.all_channels else p.fraction, "seed": p.seed,
                "eval_images": p.eval_images, "replace": p.replace, "ridge_lam": ridge_lambda(grp),
                "n_bins": p.n_bins, "peer_support": list(PEER_SUPPORT), "recovery_min_damage": RECOVERY_MIN_DAMAGE,
                "precision": p.precision}

    def prepare(self, run, ctx: Context) -> None:
        grp = store.open_group(run, mode="r+")
        require_metrics(run, grp)
        config = self.config(grp)
        store.check_stage_config(grp, self.name, config, bool(ctx.inputs.get("overwrite")), f"lesion {run}",
                                 node=store.LESION)
        if self.done(run):
            return
        m = self._metrics(run, ctx)
        needed = ("input_capture", "task_info") + (("hull_members", "top8_peers") if self.params.replace else ())
        missing = [k for k in needed if k not in m]
        if missing:
            raise ChanaxisError(f"/metrics lacks '{missing[0]}' (lesions need the local and target metrics); rerun "
                                f"`chanaxis metrics {run} --only local,target`")
        if self.params.replace and not hasattr(checked_model(run, ctx), "module"):
            raise ChanaxisError("peer replacement rewrites a layer's output inside a torch model, which this model "
                                "is not; pass --no-replace to lesion without it")
        chans = self._channels(run, ctx)
        n_images = len(self._eval(run, ctx)[0])
        _raw_group(grp, config, chans, block_size(self.params.unit_channels, n_images, self.params.batch_size))
        store.set_status(grp, self.name, "running")

    def units(self, run) -> list[Unit]:
        if self.done(run):
            return []
        grp = store.open_group(run)
        p = self.params
        chans = select_channels(metrics_layers(grp), p.fraction, p.all_channels, p.seed)
        lg = grp[store.LESION]
        done = np.asarray(lg["block_done"][...], bool)
        per = 1 + (len(REPLACE_KINDS) if p.replace else 0)
        blocks = lesion_blocks(chans, int(lg.attrs["unit_channels"]))
        return [Unit(f"layer/{name}" if (lo, hi) == (0, len(chans[name])) else f"layer/{name}/{lo}-{hi}",
                     (li, name, b, lo, hi), work=(hi - lo) * per)
                for b, (li, name, lo, hi) in enumerate(blocks) if not done[b]]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        """One block of one layer: its lesions and replacements, written as one slice, then its done flag."""
        p = self.params
        li, name, b, lo, hi = unit.data
        model = checked_model(run, ctx)
        chans = self._channels(run, ctx)
        ch = chans[name]
        x, y, _ = self._eval(run, ctx)
        peer_sets, moments = None, None
        if p.replace:
            m = self._metrics(run, ctx)
            rows = np.flatnonzero(strings(m["layer"].values) == name)[ch]
            hull = [r[r >= 0] for r in np.asarray(m["hull_members"].values)[rows]]
            top8 = [r[r >= 0] for r in np.asarray(m["top8_peers"].values)[rows]]
            # seeded over the whole layer, then sliced: a block's sets are those of a one-unit layer
            rand = random_peer_sets([len(h) for h in hull], model.graph[name].c_out, ch, seed=[p.seed, li])
            peer_sets = {k: v[lo:hi] for k, v in zip(REPLACE_KINDS, (hull, top8, [[]] * len(ch), rand))}
            # a layer split into several blocks reads its moments once (only the current layer's are kept)
            held = ctx.memo(("lesion", str(run), "moments"), dict)
            if name not in held:
                held.clear()
                held[name] = layer_moments(run, name)
            moments = held[name]
        base = self._base(run, ctx)
        with precision.autocast(p.precision, ctx.device, model):
            # the bar advances per pass, in the unit's work (one per lesion variant); run_stage ends it exactly
            res, mode = layer_damages(model, name, x, y, ch[lo:hi], base, moments, peer_sets, p.batch_size,
                                      p.suffix, advance=ctx.advance, lam=self._lam(run, ctx))
        lg = store.open_group(run, mode="r+")[store.LESION]
        # each block owns one chunk of each array (`_raw_group`): blocks of one layer may be written at once
        store.write_many([(lg[f"block_{k}"], (b, slice(0, hi - lo)), np.asarray(v, np.float64))
                          for k, v in res.items()] + [(lg["run_mode"], li, mode)])
        lg["block_done"][b] = True  # last: the block counts only once its results are on disk
        of_layer = np.asarray(lg["block_layer"][...]) == li
        if np.asarray(lg["block_done"][...], bool)[of_layer].all():
            lg["layer_done"][li] = True  # (finish sets it too: two last blocks finishing at once may both miss it)

    def finish(self, run, ctx: Context) -> str:
        if not self.done(run):
            grp = store.open_group(run, mode="r+")
            lg = grp[store.LESION]
            block_done = np.asarray(lg["block_done"][...], bool)
            if not block_done.all():
                raise ChanaxisError(f"the lesions of '{run}' have unfinished layers; rerun the same command to resume")
            lg["layer_done"][...] = True
            base_loss, base_acc = self._base(run, ctx)
            _finish(grp, self._metrics(run, ctx), self.config(grp), self._channels(run, ctx), base_loss, base_acc,
                    self._eval(run, ctx)[2], self.params.n_bins, self.params.replace)
            store.set_status(grp, self.name, "done")
        ctx.forget("lesion")
        return str(run)

    # ------------------------------------------------------------- per-process state, rebuilt from the store
    def _metrics(self, run, ctx):
        return ctx.memo(("lesion", str(run), "metrics"), lambda: metrics_table(run))

    def _channels(self, run, ctx):
        p = self.params
        return ctx.memo(("lesion", str(run), "channels", p.fraction, p.all_channels, p.seed),
                        lambda: select_channels(self._metrics(run, ctx)["layer"].values, p.fraction,
                                                p.all_channels, p.seed))

    def _eval(self, run, ctx):
        return ctx.memo(("lesion", str(run), "eval", self.params.eval_images),
                        lambda: load_eval_images(run, self.params.eval_images, ctx=ctx))

    def _base(self, run, ctx) -> tuple[float, float]:
        """Loss and accuracy of the intact model on the evaluation images (what every damage is relative to)."""
        x, y, _ = self._eval(run, ctx)
        model = checked_model(run, ctx)
        def base():
            with precision.autocast(self.params.precision, ctx.device, model):
                return evaluate(model_forward(model), tensor_batches(x, y, self.params.batch_size))
        return ctx.memo(("lesion", str(run), "base", self.params.eval_images, self.params.batch_size), base)

    def _lam(self, run, ctx) -> float:
        return ctx.memo(("lesion", str(run), "lam"), lambda: ridge_lambda(store.open_group(run)))


def lesion(run, *, device: str = "cpu", model=None, progress: bool = True, overwrite: bool = False,
           loader_workers: int | None = None, scheduler=None, workers: int | None = None, **params) -> str:
    """Lesion channels of every layer of the run store at `run`; fills `/lesion`; resumable; returns the path.
    `model`: the store's model when the store cannot rebuild it (an nn.Module); `overwrite` redoes a /lesion made
    with other parameters."""
    stage = LesionStage(**params)
    ctx = Context(device=getattr(model, "device", device), progress=progress, model=model, overwrite=overwrite,
                  loader_workers=loader_workers, scheduler=scheduler, workers=workers)
    return run_stage(stage, run, ctx)


api(LesionStage, lesion)


def layer_damages(model, layer: str, x, y, channels, base: tuple[float, float], moments=None,
                  peer_sets: dict | None = None, batch_size: int = 256, suffix: bool = True, advance=None,
                  lam: float = LAM):
    """Damage of silencing each of `channels` of `layer` on (x, y), and of replacing it from each peer set.

    Returns ({"damage_loss" (nats), "damage_acc" (%), one loss damage per peer-set kind}, execution mode).
    `peer_sets`: kind → one peer list per channel; `moments` (calibration Moments) fit the ridge replacement with
    ridge `lam` (the stage passes the metrics stage's)."""
    spec = model.graph[layer]
    ch = np.asarray(channels, np.intp)
    runner = SuffixRunner(model, layer, use_fx=suffix)
    nb = min(len(x), batch_size)
    k_var = variants_per_pass(len(x), batch_size)
    kinds = list(peer_sets or {})
    masks = lesion_variants(spec.c_out, ch)
    repl = None
    if kinds:
        sets = [s for k in kinds for s in peer_sets[k]]
        repl = replacement_matrix(moments, np.tile(ch, len(kinds)), sets, lam)
    n_var = len(ch) * (1 + len(kinds))
    ce, ok = np.zeros(n_var), np.zeros(n_var)
    for lo in range(0, len(x), nb):
        xb, yb = x[lo:lo + nb], y[lo:lo + nb]
        cache = runner.prefix(xb)
        for k0 in range(0, len(ch), k_var):
            k1 = min(len(ch), k0 + k_var)
            c, a = outcome_sums(runner.run(cache, mask=masks[k0:k1]), yb)
            ce[k0:k1] += c
            ok[k0:k1] += a
            if advance:
                advance((k1 - k0) * len(xb) / len(x))
        if repl is not None:
            t, B, b = repl
            # passes never straddle two kinds: a channel's variants then share a pass with the same neighbours
            # whether the layer runs as one unit or in blocks (a multiple of k_var), so the numbers are the same
            for k0 in (j * len(ch) + i for j in range(len(kinds)) for i in range(0, len(ch), k_var)):
                k1 = min(k0 - k0 % len(ch) + len(ch), k0 + k_var)
                fn = replacer(t[k0:k1], B[k0:k1], b[k0:k1], spec.layout)
                c, _ = outcome_sums(runner.run(cache, replace=fn, k=k1 - k0), yb)
                ce[len(ch) + k0:len(ch) + k1] += c
                if advance:
                    advance((k1 - k0) * len(xb) / len(x))
    base_loss, base_acc = base
    out = {"damage_loss": ce[:len(ch)] / len(x) - base_loss, "damage_acc": base_acc - 100 * ok[:len(ch)] / len(x)}
    for j, k in enumerate(kinds):
        out[k] = ce[len(ch) * (j + 1):len(ch) * (j + 2)] / len(x) - base_loss
    mode = runner.mode if runner.mode == "suffix" else f"full_forward ({runner.reason})"
    return out, mode


def lesion_blocks(chans: dict[str, np.ndarray], unit_channels: int) -> list[tuple[int, str, int, int]]:
    """(layer index, layer, lo, hi) of every unit: each layer's chosen channels in blocks of `unit_channels`."""
    return [(li, name, lo, min(len(ch), lo + unit_channels))
            for li, (name, ch) in enumerate(chans.items()) for lo in range(0, len(ch), unit_channels)]


def variants_per_pass(n_images: int, batch_size: int) -> int:
    """Lesion variants that share one suffix pass (each pass holds `batch_size` images × variants)."""
    return max(1, batch_size // max(1, min(n_images, batch_size)))


def block_size(unit_channels: int, n_images: int, batch_size: int) -> int:
    """`unit_channels` rounded up to a multiple of the variants per pass: a block's passes are then exactly passes
    of a one-unit layer (float32 kernels may round differently with another number of variants per pass)."""
    k = variants_per_pass(n_images, batch_size)
    return -(-unit_channels // k) * k


def _raw_group(grp, config, chans, unit_channels):
    """The running /lesion: per block, its raw results (`block_<variable>`, one chunk per block, so blocks written
    at once by several processes never share a chunk) and its done flag; per layer, `layer_done` and `run_mode`."""
    names = list(chans)
    if store.LESION in grp and "block_done" in grp[store.LESION]:
        return grp[store.LESION]
    old = grp[store.LESION] if store.LESION in grp and "layer_done" in grp[store.LESION] else None
    kept = None
    if old is not None:  # a run started by a version with one unit per layer: keep its finished layers
        unit_channels = max(1, max(len(c) for c in chans.values()))  # its block size: a whole layer
        kept = {k: np.asarray(old[k][...], np.float64) for k in DAMAGE_VARS}
        kept["layer_done"] = np.asarray(old["layer_done"][...], bool)
        kept["run_mode"] = [str(v) for v in strings(old["run_mode"][...])]
        for k in list(old.array_keys()):
            del old[k]
    blocks = lesion_blocks(chans, unit_channels)
    lg = grp.require_group(store.LESION)
    lg.attrs.update({"config": store.jsonable(config), "unit_channels": int(unit_channels)})
    k_max = max(hi - lo for _, _, lo, hi in blocks)
    for k in DAMAGE_VARS:
        store.new_array(lg, f"block_{k}", (len(blocks), k_max), ["block", "slot"], "float64",
                        chunks=(1, k_max))[...] = np.nan
    store.new_array(lg, "block_layer", (len(blocks),), ["block"], "int64")[...] = [b[0] for b in blocks]
    store.new_array(lg, "block_done", (len(blocks),), ["block"], "bool", chunks=(1,))
    store.new_array(lg, "layer_done", (len(names),), ["layer"], "bool", chunks=(1,))
    store.new_array(lg, "run_mode", (len(names),), ["layer"], str, chunks=(1,))
    if kept is not None:
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in chans.values()])])
        for b, (li, _, lo, hi) in enumerate(blocks):
            if kept["layer_done"][li]:
                for k in DAMAGE_VARS:
                    lg[f"block_{k}"][b, :hi - lo] = kept[k][offsets[li] + lo:offsets[li] + hi]
                lg["run_mode"][li] = kept["run_mode"][li]
                lg["block_done"][b] = True
                lg["layer_done"][li] = True
    return lg


def _raw_results(lg, chans) -> dict[str, np.ndarray]:
    """The per-unit (flat, in /lesion order) values of every damage variable from the per-block raw arrays."""
    blocks = lesion_blocks(chans, int(lg.attrs["unit_channels"]))
    out = {}
    for k in DAMAGE_VARS:
        raw = np.asarray(lg[f"block_{k}"][...], np.float64)
        out[k] = np.concatenate([raw[b, :hi - lo] for b, (_, _, lo, hi) in enumerate(blocks)]) if blocks \
            else np.zeros(0)
    return out


def _finish(grp, m, config, chans, base_loss, base_acc, einfo, n_bins, replace):
    """/lesion from the raw per-layer slices: damages, recoveries, provenance; then /lesion/predictors."""
    names = list(chans)
    lg = grp[store.LESION]
    data = _raw_results(lg, chans)
    modes = [str(v) for v in strings(lg["run_mode"][...])]
    layer_of_metrics = strings(m["layer"].values)
    rows = np.concatenate([np.flatnonzero(layer_of_metrics == n)[chans[n]] for n in names])
    ds = xr.Dataset(coords={
        "layer": ("unit", strings([n for n in names for _ in chans[n]])),
        "channel": ("unit", np.concatenate([chans[n] for n in names]).astype(np.int64)),
        "depth": ("unit", np.asarray(m["depth"].values)[rows]),
        "metrics_unit": ("unit", rows.astype(np.int64)),
    })
    d = data["damage_loss"]
    floor = config["recovery_min_damage"]
    ds["damage_loss"] = ("unit", d, {"units": "nats", "description": "increase of mean cross-entropy on the "
                                     "evaluation images when the channel is silenced (post-BN zero where a BN "
                                     "follows)"})
    ds["damage_acc"] = ("unit", data["damage_acc"], {"units": "%", "description": "accuracy lost (percentage points; "
                                                      "positive = worse) when the channel is silenced"})
    if replace:
        desc = {"replaced_damage": "hull peers H_i", "replaced_damage_top8": "the 8 peers of largest |rho|",
                "mean_ablation_damage": "control: the calibration mean of the channel",
                "random_peer_damage": "control: a random peer set of the hull's size"}
        for k in REPLACE_KINDS:
            ds[k] = ("unit", data[k], {"units": "nats", "description": "damage when the channel's pre-norm output is "
                                       f"replaced by a ridge fit from {desc[k]} (METHOD §6)"})
            rk = "recovery" + k[len("replaced_damage"):] if k.startswith("replaced_damage") else \
                "recovery_" + k[:-len("_damage")]
            with np.errstate(divide="ignore", invalid="ignore"):
                rec = np.where(d > floor, (d - data[k]) / d, np.nan)
            ds[rk] = ("unit", rec, {"units": "1", "description": f"(damage − {k}) / damage; NaN where "
                                    f"damage ≤ {floor} nats"})
    execution = {n: md for n, md in zip(names, modes)}
    ds.attrs.update({"config": store.jsonable(config), "base_loss_nats": float(base_loss),
                     "base_accuracy_pct": float(base_acc), "eval": einfo, "execution": execution,
                     "suffix_runs": all(v == "suffix" for v in modes),
                     "lesion": "post-BN zero where a per-channel BN follows, else the layer output itself (METHOD §6)",
                     "ridge_lam": config["ridge_lam"],
                     "replacement": f"ridge (lambda {config['ridge_lam']:g}, the metrics stage's, on standardised "
                                    "channels) from calibration moments; fed at the pre-norm hook point, then the "
                                    "layer's norm as usual"})
    ds["layer_done"] = ("layer_index", np.ones(len(names), bool))
    ds["run_mode"] = ("layer_index", strings(modes))
    store.write_dataset(grp, store.LESION, ds)
    store.set_stage_config(grp, "lesion", config, node=store.LESION)
    store.write_dataset(grp, f"{store.LESION}/predictors", _predictor_dataset(m, rows, ds, n_bins))


def _predictor_dataset(m, rows, ds, n_bins) -> xr.Dataset:
    sub = m.isel(unit=rows)
    # sorted: the store lists its variables in directory order, which two copies of one store need not share
    scores = {k: np.asarray(sub[k].values, np.float64) for k in sorted(sub.data_vars)
              if sub[k].dims == ("unit",) and k not in NOT_PREDICTORS and np.issubdtype(sub[k].dtype, np.number)}
    for meth in ("ix_minus_red", "ix_plus_red", "composite_local", "hull", "composite_target"):
        try:
            scores[f"score_{meth}"] = sc.score(meth, m)[rows]
        except KeyError:
            pass
    peer = {k: scores[k] for k in PEER_SUPPORT if k in scores}
    t = pred.predictor_tables(ds["layer"].values, ds["damage_loss"].values, scores, scores["task_info"],
                              scores["input_capture"], peer, n_bins)
    r2 = t["r2"]
    out = xr.Dataset(
        {"spearman": (("layer", "metric"), t["spearman"], {"units": "1", "description":
                                                           "Spearman(score, -damage_loss) within the layer"}),
         "n_units": ("layer", t["n_units"], {"description": "lesioned channels of the layer"}),
         "spearman_layer_mean": ("metric", t["spearman_layer_mean"], {"units": "1"}),
         "within_bin": (("layer", "metric"), t["within_bin"], {
             "units": "1", "description": f"Spearman(score, -damage) inside {n_bins} quantile bins of "
                                                     "task_info, pooled over the bins by Fisher z (weights n-3)"}),
         "within_bin_pooled": ("metric", t["within_bin_pooled"], {
             "units": "1", "description": "within-bin Spearman pooled over all bins of all layers "
                                                     "(Fisher z, weights n-3)"}),
         "within_bin_n_bins": ("metric", t["within_bin_n_bins"], {"description": "bins with n > 3 that entered"}),
         "r2_base": ("r2_scope", r2[:, 0], {"units": "1", "description": "OLS of damage on (input_capture, "
                                            "task_info), within-layer percentile ranks"}),
         "r2_full": ("r2_scope", r2[:, 1], {"units": "1", "description": "adding peer support: "
                                            + ", ".join(PEER_SUPPORT)}),
         "delta_r2": ("r2_scope", r2[:, 2], {"units": "1", "description": "incremental R^2 of peer support"}),
         "delta_r2_p": ("r2_scope", r2[:, 3], {"description": "nested-model F test p-value"})},
        coords={"layer": strings(t["names"]), "metric": strings(t["metrics"]),
                "r2_scope": strings(t["r2_scopes"])})
    out.attrs.update({"sign": "positive = a high score marks a channel whose lesion hurts little",
                      "n_bins": n_bins, "peer_support": list(PEER_SUPPORT)})
    return out
