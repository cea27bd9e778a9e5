"""Single-channel lesions, peer replacement and the predictor tables (METHOD §6), written to `/lesion`.

One unit per layer: the evaluation images go through the layer's prefix once; then each lesion (and each
replacement variant) runs only the suffix, K variants per pass. A unit writes its layer's slice and then its done
flag, so a killed run resumes at the unfinished layers, in any order and in any process.
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
    """Lesions (METHOD §6): one unit per layer (its chosen channels silenced, then replaced from each peer set);
    `finish` assembles /lesion and its predictor tables. `ctx.inputs`: optional `overwrite`."""

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
        _raw_group(grp, config, list(chans), sum(len(v) for v in chans.values()))
        store.set_status(grp, self.name, "running")

    def units(self, run) -> list[Unit]:
        if self.done(run):
            return []
        grp = store.open_group(run)
        p = self.params
        chans = select_channels(metrics_layers(grp), p.fraction, p.all_channels, p.seed)
        done = np.asarray(grp[store.LESION]["layer_done"][...], bool)
        per = 1 + (len(REPLACE_KINDS) if p.replace else 0)
        return [Unit(f"layer/{name}", (li, name), work=len(ch) * per)
                for li, (name, ch) in enumerate(chans.items()) if not done[li]]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        """One layer: its lesions and replacements, written as one slice, then its done flag."""
        p = self.params
        li, name = unit.data
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
            rand = random_peer_sets([len(h) for h in hull], model.graph[name].c_out, ch, seed=[p.seed, li])
            peer_sets = dict(zip(REPLACE_KINDS, (hull, top8, [[]] * len(ch), rand)))
            moments = layer_moments(run, name)
        base = self._base(run, ctx)
        with precision.autocast(p.precision, ctx.device, model):
            res, mode = layer_damages(model, name, x, y, ch, base, moments, peer_sets, p.batch_size, p.suffix,
                                      lam=self._lam(run, ctx))
        lo = sum(len(chans[n]) for n in list(chans)[:li])
        lg = store.open_group(run, mode="r+")[store.LESION]
        for k, v in res.items():
            lg[k][lo:lo + len(ch)] = v
        lg["run_mode"][li] = mode
        lg["layer_done"][li] = True  # last: the layer counts only once its results are on disk

    def finish(self, run, ctx: Context) -> str:
        if not self.done(run):
            grp = store.open_group(run, mode="r+")
            if not np.asarray(grp[store.LESION]["layer_done"][...], bool).all():
                raise ChanaxisError(f"the lesions of '{run}' have unfinished layers; rerun the same command to resume")
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
    k_var = max(1, batch_size // nb)
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
            for k0 in range(0, len(t), k_var):
                k1 = min(len(t), k0 + k_var)
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


def _raw_group(grp, config, names, n_units):
    if store.LESION in grp and "layer_done" in grp[store.LESION]:
        return grp[store.LESION]
    lg = grp.require_group(store.LESION)
    lg.attrs["config"] = store.jsonable(config)  # on this handle: later writes through it keep the config
    for k in DAMAGE_VARS:
        store.new_array(lg, k, (n_units,), ["unit"], "float64")[:] = np.nan
    store.new_array(lg, "layer_done", (len(names),), ["layer"], "bool", chunks=(1,))
    store.new_array(lg, "run_mode", (len(names),), ["layer"], str, chunks=(1,))
    return lg


def _finish(grp, m, config, chans, base_loss, base_acc, einfo, n_bins, replace):
    """/lesion from the raw per-layer slices: damages, recoveries, provenance; then /lesion/predictors."""
    names = list(chans)
    lg = grp[store.LESION]
    data = {k: np.asarray(lg[k][...], np.float64) for k in DAMAGE_VARS}
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
            ds[rk] = ("unit", rec, {"units": "fraction", "description": f"(damage − {k}) / damage; NaN where "
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
        {"spearman": (("layer", "metric"), t["spearman"], {"units": "Spearman rho", "description":
                                                           "Spearman(score, -damage_loss) within the layer"}),
         "n_units": ("layer", t["n_units"], {"description": "lesioned channels of the layer"}),
         "spearman_layer_mean": ("metric", t["spearman_layer_mean"], {"units": "Spearman rho"}),
         "within_bin": (("layer", "metric"), t["within_bin"], {
             "units": "Spearman rho", "description": f"Spearman(score, -damage) inside {n_bins} quantile bins of "
                                                     "task_info, pooled over the bins by Fisher z (weights n-3)"}),
         "within_bin_pooled": ("metric", t["within_bin_pooled"], {
             "units": "Spearman rho", "description": "within-bin Spearman pooled over all bins of all layers "
                                                     "(Fisher z, weights n-3)"}),
         "within_bin_n_bins": ("metric", t["within_bin_n_bins"], {"description": "bins with n > 3 that entered"}),
         "r2_base": ("r2_scope", r2[:, 0], {"units": "R^2", "description": "OLS of damage on (input_capture, "
                                            "task_info), within-layer percentile ranks"}),
         "r2_full": ("r2_scope", r2[:, 1], {"units": "R^2", "description": "adding peer support: "
                                            + ", ".join(PEER_SUPPORT)}),
         "delta_r2": ("r2_scope", r2[:, 2], {"units": "R^2", "description": "incremental R^2 of peer support"}),
         "delta_r2_p": ("r2_scope", r2[:, 3], {"description": "nested-model F test p-value"})},
        coords={"layer": strings(t["names"]), "metric": strings(t["metrics"]),
                "r2_scope": strings(t["r2_scopes"])})
    out.attrs.update({"sign": "positive = a high score marks a channel whose lesion hurts little",
                      "n_bins": n_bins, "peer_support": list(PEER_SUPPORT)})
    return out
