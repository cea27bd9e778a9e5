"""The paper's claims as verdicts (chanaxis/claims.py): each verdict flips where its statistic crosses the threshold,
an interval that crosses it or is missing is inconclusive, a stage that did not run is "not measured"; `compare` puts
runs of different models in one table and one Dataset with a `run` dimension."""
import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from rich.console import Console

import chanaxis
from chanaxis import claims
from chanaxis.claims import CLAIMS, Measured, judge, verdict
from chanaxis.stages.metrics import metrics

FAST = {"n_null": 1, "n_perm": 20, "n_triplets": 200, "geometry_images": 64}


# ---- (a) verdicts on synthetic inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"claim{c.id}")
def test_each_claims_verdict_flips_at_its_threshold(claim):
    thr, up = claim.threshold, claim.side == "above"
    good, bad = (thr + 0.5, thr - 0.5) if up else (thr - 0.5, thr + 0.5)
    assert judge(claim, Measured(good, good - 0.1, good + 0.1, "layers"))["verdict"] == "reproduced"
    assert judge(claim, Measured(bad, bad - 0.1, bad + 0.1, "layers"))["verdict"] == "not reproduced"
    row = judge(claim, Measured(thr + 0.05, thr - 0.2, thr + 0.3, "layers"))
    assert row["verdict"] == "inconclusive" and "crosses" in row["reason"]
    assert judge(claim, Measured(missing="the stage was not run"))["verdict"] == "not measured"
    assert judge(claim, Measured(None, None, None))["verdict"] == "not measured"


def test_no_interval_or_zero_width_is_inconclusive_and_never_shown_as_a_ci():
    c = CLAIMS[6]  # local beats target: above 0
    row = judge(c, Measured(5.0, math.nan, math.nan, "seeds"))
    assert row["verdict"] == "inconclusive" and "no interval" in row["reason"]
    row = judge(c, Measured(-19.57, -19.57, -19.57, "seeds"))
    assert row["verdict"] == "inconclusive" and "zero-width" in row["reason"]
    assert row["low"] is None and row["high"] is None  # a zero-width interval is not stored as a CI
    from chanaxis.report.terminal import interval_text
    assert interval_text(row) == "-19.6 (no interval)"
    assert verdict(1.0, 0.5, 1.5, 0.0, "above") == ("reproduced", "the whole interval is above 0")


def test_statistics_from_per_layer_arrays():
    rng = np.random.default_rng(0)
    # 4: Q_R > Q_S in every layer → reproduced; one layer where Q_S wins → not reproduced, naming the layer
    q_s = rng.uniform(0.1, 0.2, 12)
    q_r = q_s + rng.uniform(0.1, 0.3, 12)
    assert judge(CLAIMS[3], claims.q_gap(q_r, q_s))["verdict"] == "reproduced"
    q_r[5] = q_s[5] - 0.01
    row = judge(CLAIMS[3], claims.q_gap(q_r, q_s, [f"L{k}" for k in range(12)]))
    assert row["verdict"] == "not reproduced" and "L5" in row["reason"]
    # 5: S3/S2 rising with depth → reproduced; falling → not reproduced
    depth = np.arange(12.0)
    assert judge(CLAIMS[4], claims.depth_trend(depth + rng.normal(0, 2.0, 12), depth))["verdict"] == "reproduced"
    assert judge(CLAIMS[4], claims.depth_trend(-depth + rng.normal(0, 2.0, 12), depth))["verdict"] == "not reproduced"
    # 3: coupling falling from initialisation → reproduced; rising → not reproduced; one checkpoint → not measured
    init, end = rng.uniform(0.6, 0.8, 10), rng.uniform(0.1, 0.3, 10)
    assert judge(CLAIMS[2], claims.decoupling(np.stack([init, end]), [0, 5]))["verdict"] == "reproduced"
    assert judge(CLAIMS[2], claims.decoupling(np.stack([end, init]), [0, 5]))["verdict"] == "not reproduced"
    assert judge(CLAIMS[2], claims.decoupling(init[None], [0]))["verdict"] == "not measured"
    # 2: ARI at its null → reproduced; ARI far above it → not reproduced
    assert judge(CLAIMS[1], claims.ari_excess(rng.normal(0, 0.01, 10), np.zeros(10)))["verdict"] == "reproduced"
    assert judge(CLAIMS[1], claims.ari_excess(0.6 + rng.normal(0, 0.01, 10), np.zeros(10)))["verdict"] == \
        "not reproduced"
    # fewer layers than MIN_RESAMPLED: no interval → inconclusive
    assert judge(CLAIMS[1], claims.ari_excess([0.0, 0.01], [0, 0]))["verdict"] == "inconclusive"


def test_alignment_ratio_and_hull_margin():
    metrics_ = list(claims.LOCAL) + list(claims.TARGET)
    n = len(metrics_)
    loc = len(claims.LOCAL)

    def layers(within, cross, L=10):
        r = np.full((L, n, n), cross)
        r[:, :loc, :loc] = within
        r[:, loc:, loc:] = within
        return r + np.random.default_rng(1).normal(0, 0.02, (L, n, n))
    assert judge(CLAIMS[0], claims.alignment_ratio(layers(0.8, 0.1), metrics_))["verdict"] == "reproduced"
    assert judge(CLAIMS[0], claims.alignment_ratio(layers(0.5, 0.5), metrics_))["verdict"] == "not reproduced"
    names = ["hull_score", "task_info", "input_capture", "score_hull"]
    wb = np.tile([0.5, 0.1, -0.2, 0.9], (6, 1)) + np.random.default_rng(2).normal(0, 0.02, (6, 4))
    m = claims.hull_margin(wb, names, [40] * 6)
    assert judge(CLAIMS[5], m)["verdict"] == "reproduced"  # score_* composites do not compete
    assert m.value == pytest.approx(0.5 - 0.2, abs=0.03)
    wb[:, 1] = -0.8  # task_info now predicts more strongly (by |ρ|)
    assert judge(CLAIMS[5], claims.hull_margin(wb, names, [40] * 6))["verdict"] == "not reproduced"
    assert judge(CLAIMS[5], claims.hull_margin(wb, names, [10] * 6))["verdict"] == "not measured"  # bins of 2


def test_lesion_predictor_and_alignment_tables_carry_layer_bootstrap_intervals():
    from chanaxis.interventions.predictors import predictor_tables
    from chanaxis.report.summary import alignment, lesion_summary
    from chanaxis.report.terminal import band
    rng = np.random.default_rng(3)
    layer = np.repeat([f"L{k}" for k in range(8)], 60)
    task = rng.normal(size=len(layer))
    damage = rng.normal(size=len(layer))
    scores = {"hull_score": -damage + rng.normal(0, 1.0, len(layer)), "task_info": task,
              "input_capture": rng.normal(size=len(layer))}
    t = predictor_tables(layer, damage, scores, task, scores["input_capture"],
                         {"peer_overlap": rng.normal(size=len(layer))}, n_bins=5)
    # pooling a layer at a time with each layer's Fisher weight is METHOD §6's pooling of every bin
    every = claims.fisher_pooled(t["within_bin"], claims.bin_weights(t["n_units"], 5), np.arange(8))
    np.testing.assert_allclose(every, t["within_bin_pooled"], atol=1e-9)
    pred = xr.Dataset({"spearman": (("layer", "metric"), t["spearman"]),
                       "spearman_layer_mean": ("metric", t["spearman_layer_mean"]),
                       "within_bin": (("layer", "metric"), t["within_bin"]),
                       "within_bin_pooled": ("metric", t["within_bin_pooled"]),
                       "n_units": ("layer", t["n_units"]), "r2_scope": ("scope", ["pooled"]),
                       "delta_r2": ("scope", [np.nan]), "delta_r2_p": ("scope", [np.nan])},
                      coords={"metric": list(scores)}, attrs={"n_bins": 5})
    les = xr.Dataset({"damage_loss": ("unit", damage), "damage_acc": ("unit", damage)})
    got = lesion_summary(les, pred)
    assert got["interval_resampled"] == f"layers (8), {claims.N_BOOT} resamples"
    assert got["within_interval_resampled"].startswith("layers with within-bin ρ (8)")
    for m in scores:
        for key in ("spearman_layer_mean", "within_bin_pooled"):
            lo, hi = got[f"{key}_interval"][m]
            assert lo < got[key][m] < hi, (m, key)
    lo, hi = got["within_bin_pooled_interval"]["hull_score"]
    assert lo > 0.3  # hull_score tracks damage inside every bin: its interval sits well above 0
    lo, hi = got["within_bin_pooled_interval"]["input_capture"]
    assert lo < 0 < hi  # unrelated noise: its interval covers 0
    assert band([0.1, 0.1]) == "" and band([None, 0.2]) == "" and band([0.1, 0.3]) == " [+0.10, +0.30]"
    # two layers: no interval (fewer than MIN_RESAMPLED), the table says so instead of printing a CI
    two = lesion_summary(les.isel(unit=slice(0, 120)), pred.isel(layer=slice(0, 2)))
    assert "spearman_layer_mean_interval" not in two and "interval_resampled" not in two
    assert "within_bin_pooled_interval" not in two
    # layers whose bins hold 3 lesions or fewer carry no within-bin ρ: they are not among the units resampled
    few = pred.copy()
    few["n_units"] = ("layer", np.where(np.arange(8) < 5, 60, 10))
    got5 = lesion_summary(les, few)
    assert got5["within_interval_resampled"].startswith("layers with within-bin ρ (5)")
    assert got5["interval_resampled"].startswith("layers (8)")

    # the alignment table's layer means: layers resampled, one draw for every row
    metrics_ = list(claims.LOCAL) + list(claims.TARGET)
    n, loc = len(metrics_), len(claims.LOCAL)
    rho = np.full((10, n, n), 0.1) + rng.normal(0, 0.05, (10, n, n))
    rho[:, :loc, :loc] += 0.6
    rho[:, loc:, loc:] += 0.6
    s = xr.Dataset({"spearman": (("layer", "metric", "metric2"), rho),
                    "spearman_mean": (("metric", "metric2"), rho.mean(0)),
                    "spearman_sd": (("metric", "metric2"), rho.std(0)),
                    "spearman_pooled": (("metric", "metric2"), rho.mean(0))},
                   coords={"metric": metrics_, "metric2": metrics_})
    a = alignment(s)
    for key in ("within_local", "within_target", "cross"):
        lo, hi = a[key]["interval"]
        assert lo < a[key]["mean_abs_rho"] < hi
    assert a["cross"]["interval"][1] < a["within_local"]["interval"][0]  # well separated blocks
    assert a["ix_vs_it"]["interval"][0] < a["ix_vs_it"]["mean"] < a["ix_vs_it"]["interval"][1]


def _pruning(mean, low, high, interval=None):
    ds = xr.Dataset({"contrast_mean": (("regime", "contrast"), np.array(mean, float)),
                     "contrast_ci_low": (("regime", "contrast"), np.array(low, float)),
                     "contrast_ci_high": (("regime", "contrast"), np.array(high, float))},
                    coords={"regime": ["oneshot", "finetuned"], "contrast": ["best_local-best_target",
                                                                             "best_local-magnitude"],
                            "seed": [42, 123, 456]})
    if interval:
        ds["contrast_ci_low"].attrs["interval"] = interval
    return ds


def test_pruning_contrasts_read_both_regimes_and_the_interval_attr():
    c7 = CLAIMS[6]
    ds = _pruning([[3, 1], [5, 1]], [[1, 0], [2, 0]], [[4, 2], [8, 2]], "images nested in seeds, 10000 resamples")
    row = judge(c7, claims.pruning_contrast(ds, "best_local-best_target"))
    assert row["verdict"] == "reproduced" and row["resampled"] == "images nested in seeds, 10000 resamples"
    assert row["value"] == 3  # the weaker regime is shown
    ds = _pruning([[3, 1], [-5, 1]], [[1, 0], [-8, 0]], [[4, 2], [-2, 2]])  # fine-tuned: target wins
    row = judge(c7, claims.pruning_contrast(ds, "best_local-best_target"))
    assert row["verdict"] == "not reproduced" and "finetuned" in row["reason"]
    ds = _pruning([[3, 1], [5, 1]], [[1, 0], [np.nan, 0]], [[4, 2], [np.nan, 2]])  # no interval in one regime
    ds["contrast_resamples"] = (("regime", "contrast"), np.array([["images", "images"], ["one seed: no spread",
                                                                                         "images"]]))
    row = judge(c7, claims.pruning_contrast(ds, "best_local-best_target"))
    assert row["verdict"] == "inconclusive" and row["resampled"] == "one seed: no spread"
    assert row["low"] is None and "finetuned +5.00 (no interval)" in row["reason"]
    ds = _pruning([[3, 1], [np.nan, 1]], [[1, 0], [np.nan, 0]], [[4, 2], [np.nan, 2]])  # fine-tuning not run
    row = judge(c7, claims.pruning_contrast(ds, "best_local-best_target"))
    assert row["verdict"] == "inconclusive" and "finetuned was not run" in row["reason"]
    c8 = CLAIMS[7]
    ds = _pruning([[3, 0.5], [5, 1.0]], [[1, 0.1], [2, 0.2]], [[4, 1.0], [8, 1.5]])
    assert judge(c8, claims.pruning_contrast(ds, "best_local-magnitude", "max"))["verdict"] == "reproduced"
    ds = _pruning([[3, 0.5], [5, 9.0]], [[1, 0.1], [2, 6.0]], [[4, 1.0], [8, 12.0]])
    assert judge(c8, claims.pruning_contrast(ds, "best_local-magnitude", "max"))["verdict"] == "not reproduced"
    assert judge(c7, claims.pruning_contrast(None, "best_local-best_target"))["verdict"] == "not measured"
    assert claims.is_vgg16_bn("vgg16_bn") and claims.is_vgg16_bn("timm/vgg16_bn.tv_in1k")
    assert not claims.is_vgg16_bn("vgg16") and not claims.is_vgg16_bn("test_resnet")


def test_pruning_that_changes_no_prediction_is_flagged_never_a_verdict():
    rng = np.random.default_rng(4)
    base = rng.random(50) < 0.7
    loss_base = rng.uniform(0.1, 2.0, 50)
    ds = _pruning([[3, 1], [5, 1]], [[1, 0], [2, 0]], [[4, 2], [8, 2]])  # would be "reproduced" on its own
    cells = ("method", "level", "seed", "image")
    ds["correct_base"] = ("image", base)
    ds["loss_base_image"] = ("image", loss_base)
    ds["correct_oneshot"] = (cells, np.broadcast_to(base, (2, 2, 3, 50)).copy())
    ds["loss_oneshot_image"] = (cells, np.broadcast_to(loss_base + 1e-4, (2, 2, 3, 50)).copy())
    ds["macs_retained_pct"] = (("method", "level", "seed"), np.full((2, 2, 3), 70.0))
    msg = claims.pruning_inert(ds)
    assert "changed no evaluation image's prediction" in msg and "30 %" in msg and "0.0001 nats" in msg
    row = judge(CLAIMS[6], claims.pruning_contrast(ds, "best_local-best_target"))
    assert row["verdict"] == "inconclusive" and row["reason"].startswith("one-shot pruning changed no")
    ds["correct_oneshot"][1, 1, 2, 7] = not base[7]  # one image of one cell flips: a real effect, no warning
    assert claims.pruning_inert(ds) == ""
    assert judge(CLAIMS[6], claims.pruning_contrast(ds, "best_local-best_target"))["verdict"] == "reproduced"


def test_lesions_that_change_nothing_are_flagged():
    rng = np.random.default_rng(5)
    loss = rng.uniform(0.001, 0.1, 100)  # every lesion moves the loss: no warning
    acc = np.zeros(100)
    assert claims.lesion_inert(loss, acc) == ""
    loss[:60] = rng.uniform(-5e-5, 5e-5, 60)  # 60 % move it by less than INERT_LOSS_NATS and no accuracy
    msg = claims.lesion_inert(loss, acc)
    assert msg.startswith("60 % of the 100 lesions changed neither")
    acc[:20] = 0.25  # 20 of those change the accuracy: 40 % inert, under the line
    assert claims.lesion_inert(loss, acc) == ""


# ---- (b), (c) on tiny stores ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("claims")
    out = []
    for name, n in (("test_resnet", 64), ("test_convnext", 48)):
        torch.manual_seed(0)
        model = chanaxis.load_model(name, num_classes=10, image_size=32)
        run = chanaxis.capture(model, "synthetic", d / f"{name}.zarr", n_calibration=n, chunk_images=32,
                               progress=False)
        metrics(run, progress=False, model=model, **FAST)
        out.append(run)
    return out


def test_report_without_lesion_or_pruning_ends_with_the_claims(two_stores, tmp_path):
    from chanaxis.report import report
    con = Console(record=True, width=200)
    summary = report(two_stores[0], console=con, figures=False, out_dir=str(tmp_path))
    rows = {r["id"]: r for r in summary["claims"]}
    assert sorted(rows) == list(range(1, 9))
    for k in (3, 6, 7, 8):
        assert rows[k]["verdict"] == "not measured" and rows[k]["value"] is None, rows[k]
    for k in (1, 2, 4, 5):
        assert rows[k]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        assert rows[k]["resampled"].startswith("layers")
        assert rows[k]["low"] is None or rows[k]["high"] > rows[k]["low"]
    text = con.export_text()
    last = text[text.index("The paper's claims on this run"):]
    assert "By depth" not in last and "Cross-layer propagation" not in last  # the last section
    assert last.count("not measured") == 4  # claims 3, 6, 7, 8
    assert "the lesion stage was not run" in last and "the pruning stage was not run" in last
    saved = json.loads(next(tmp_path.glob("*_summary.json")).read_text())
    assert saved["claims"] == json.loads(json.dumps(summary["claims"]))


def test_compare_two_models_one_table_two_rows(two_stores, capsys, tmp_path):
    ds = chanaxis.compare([str(p) for p in two_stores])
    assert ds.sizes == {"run": 2, "claim": 8}
    assert list(ds["model"].values) == ["test_resnet", "test_convnext"]
    assert set(ds.data_vars) >= {"value", "low", "high", "verdict"}
    assert (ds["verdict"].sel(claim=[6, 7, 8]) == "not measured").all()
    assert ds.attrs["mixed"] and "calibration size" in ds.attrs["notes"][0]  # 64 vs 48 images: marked
    assert all("calibration size" in n for n in ds["note"].values)

    from chanaxis.cli.main import main
    assert main(["compare", *map(str, two_stores), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in got["runs"]] == ["test_resnet", "test_convnext"] and got["notes"]
    from chanaxis.comparison import collect, render
    con = Console(record=True, width=220)
    render(collect(two_stores), con)
    text = con.export_text()
    assert text.count("┏") == 1  # one table
    body = text[text.index("┡"):text.index("└")]
    assert body.count("├") == 1  # two rows, one separator
    assert "test_resnet" in body and "test_convnext" in body
    assert "warning: the runs differ in calibration size" in text
    narrow = Console(record=True, width=100)  # too narrow for a column per claim: a row per claim instead
    render(collect(two_stores), narrow)
    text = narrow.export_text()
    assert text.count("┏") == 1 and "a row per claim at" in text
    body = text[text.index("┡"):text.index("└")]
    assert body.count("├") == 7 and "8. magnitude competitive" in body  # eight claim rows
    assert max(len(line) for line in text.splitlines()) <= 100
    from chanaxis.comparison import figures
    written = figures(two_stores, tmp_path)  # no pruning in these runs: the planes only
    assert [p.name for p in written] == ["compare_planes.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
