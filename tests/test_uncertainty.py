"""The paired image bootstrap (chanaxis.uncertainty): known-answer coverage on synthetic per-image outcomes, what each
interval says it resamples, no zero-width intervals, and the per-image outcomes a pruning run keeps."""
import numpy as np
import pytest

import chanaxis
from chanaxis import uncertainty as unc
from chanaxis.interventions import curves

P_A = np.array([0.85, 0.55])  # method A's accuracy on easy / hard images
P_B = np.array([0.80, 0.45])
TRUE_DIFF = 100 * float(np.mean(P_A - P_B))  # half the images easy: 7.5 points


def _dataset(rng, n_seeds, n_images, seed_sd=0.0, shared_noise=False):
    """Correctness of A and B (seeds × images) on the same images: paired through each image's difficulty and through
    one uniform per (seed, image) that both methods see; `seed_sd`: a per-seed shift of A's accuracy (the fine-tuning
    lottery, mean 0); `shared_noise`: the same outcomes for every seed (a seed-free one-shot score)."""
    hard = rng.random(n_images) < 0.5
    u = rng.random((1 if shared_noise else n_seeds, n_images))
    u = np.broadcast_to(u, (n_seeds, n_images))
    shift = rng.normal(0, seed_sd, (n_seeds, 1))
    return u < np.clip(P_A[hard.astype(int)] + shift, 0, 1), u < P_B[hard.astype(int)]


@pytest.mark.parametrize("n_seeds, seed_sd, shared", [(2, 0.0, False), (5, 0.01, False), (5, 0.0, True)],
                         ids=["2 seeds", "5 seeds, seed effect", "5 identical seeds"])
def test_the_95_interval_covers_the_true_difference_in_about_95_of_200_datasets(n_seeds, seed_sd, shared):
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for i in range(200):
        a, b = _dataset(rng, n_seeds, 300, seed_sd, shared)
        iv = unc.paired_difference(a, b, n_resamples=600, seed=i)
        assert iv.has_interval and iv.low < iv.estimate < iv.high
        assert iv.estimate == pytest.approx(100 * (a.mean() - b.mean()))
        covered += iv.low <= TRUE_DIFF <= iv.high
        widths.append(iv.high - iv.low)
    assert 0.90 <= covered / 200 <= 0.99, covered
    assert 2 < np.median(widths) < 15  # image sampling: a few accuracy points at 300 images


def test_drawing_images_per_seed_would_undercover_identical_seeds():
    """Why one image draw is shared by every seed: with independent draws per seed, five identical seeds would
    count the same images' noise five times over and the interval would shrink by ~√5."""
    rng = np.random.default_rng(2)
    a, b = _dataset(rng, 5, 300, shared_noise=True)
    five = unc.paired_difference(a, b, n_resamples=2000, seed=0)
    one = unc.paired_difference(a[:1], b[:1], n_resamples=2000, seed=0)
    assert five.high - five.low == pytest.approx(one.high - one.low, rel=0.15)


def test_the_interval_says_what_it_resamples():
    rng = np.random.default_rng(3)
    a, b = _dataset(rng, 2, 200)
    two = unc.paired_difference(a, b, n_resamples=200)
    assert "evaluation images only" in two.resampled and "image sampling only" in two.resampled
    assert "seeds" in two.resampled and "fewer than 3 seeds" in two.resampled
    a, b = _dataset(rng, 3, 200)
    three = unc.paired_difference(a, b, n_resamples=200)
    assert "the 3 seeds and of the 200 evaluation images" in three.resampled
    assert "only" not in three.resampled and three.resampled.startswith("95 % percentile bootstrap, 200 resamples")
    assert unc.describe(5, 10, 100, 0.9).startswith("90 % percentile bootstrap, 100 resamples of the 5 seeds")


def test_resampled_seeds_widen_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(4)
    a, b = _dataset(rng, 5, 400)
    a = a.copy()
    a[:2] = b[:2]  # two seeds where A is B: the seed-to-seed spread is large
    iv = unc.paired_difference(a, b, n_resamples=2000)
    same = unc.paired_difference(np.repeat(a[2:3], 5, 0), np.repeat(b[2:3], 5, 0), n_resamples=2000)
    assert (iv.high - iv.low) > 1.5 * (same.high - same.low)


def test_identical_outcomes_give_no_interval_and_say_why():
    a = np.ones((3, 50), bool)
    a[:, :10] = False
    iv = unc.paired_difference(a, a.copy(), n_resamples=300)
    assert iv.estimate == 0 and np.isnan(iv.low) and np.isnan(iv.high) and not iv.has_interval
    assert iv.resampled == unc.NO_VARIATION == "no variation in the resampled outcomes"
    # all images agree with each other (a constant difference): no variation either, never a zero-width interval
    b = np.zeros((2, 50), bool)
    iv = unc.paired_difference(np.ones((2, 50), bool), b, n_resamples=300)
    assert iv.estimate == 100 and np.isnan(iv.low) and iv.resampled == unc.NO_VARIATION
    # unmeasured outcomes: no estimate
    z = np.full((2, 5), np.nan)
    assert unc.bootstrap_mean(z, n_resamples=10).resampled == unc.NOT_MEASURED


def test_joint_resamples_are_deterministic_and_per_statistic():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(3, 4, 100))
    z[1] = 0.0
    got = unc.bootstrap_mean(z, n_resamples=500, seed=7)
    assert got == unc.bootstrap_mean(z, n_resamples=500, seed=7)
    assert got[0].has_interval and got[2].has_interval and got[1].resampled == unc.NO_VARIATION
    alone = unc.bootstrap_mean(z[0], n_resamples=500, seed=7)
    assert alone == got[0]  # a statistic's interval does not depend on what else is resampled with it


def test_the_auc_recomputed_from_per_image_outcomes_through_its_weights():
    """AUC is linear in the levels' accuracies once the MACs reductions are fixed: the weights reproduce
    `curves.mean_over` for any accuracies, so each resample's AUC is the AUC of its resampled accuracies."""
    rng = np.random.default_rng(6)
    red = np.array([0.35, 0.1, 0.5, 0.5, 0.8])  # unsorted, one duplicate
    lo, hi = 0.2, 0.7
    w = curves.auc_weights(red, lo, hi)
    assert w.sum() == pytest.approx(1.0)
    for _ in range(5):
        acc = rng.uniform(0, 100, red.size)
        assert w @ acc == pytest.approx(curves.mean_over(red, acc, lo, hi), rel=1e-12)
    # per-image: seeds × levels × images; one resample by hand equals the weighted per-image mean
    a = rng.random((2, red.size, 40)) < 0.7
    b = rng.random((2, red.size, 40)) < 0.6
    wa = np.stack([w, w])
    draw = rng.integers(0, 40, 40)
    by_hand = np.mean([curves.mean_over(red, 100 * a[s][:, draw].mean(1), lo, hi)
                       - curves.mean_over(red, 100 * b[s][:, draw].mean(1), lo, hi) for s in range(2)])
    z = 100 * (unc.curve_contributions(a, wa) - unc.curve_contributions(b, wa))
    assert z[:, draw].mean() == pytest.approx(by_hand, rel=1e-10)
    iv = unc.paired_curve_difference(a, b, wa, wa, n_resamples=300)
    assert iv.estimate == pytest.approx(z.mean()) and iv.has_interval
    assert "fewer than 3 seeds" in iv.resampled


# ------------------------------------------------------------------------------------------ a pruning run's outcomes
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from chanaxis.stages.metrics import metrics
    out = tmp_path_factory.mktemp("unc") / "run.zarr"
    m = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
    chanaxis.capture(m, "synthetic", out, n_calibration=64, chunk_images=64, progress=False)
    metrics(out, only=("local", "target"), progress=False)
    chanaxis.prune(out, methods=["input_capture", "task_info", "magnitude", "random"], levels=[0.1, 0.5, 0.9],
                   seeds=[42, 123, 456], finetune_epochs=1, finetune_batches=1, model=m, eval_images=24,
                   batch_size=16, progress=False, n_resamples=300)
    return chanaxis.open_run(out)["pruning"].to_dataset().compute()


def test_a_pruning_run_keeps_per_image_outcomes_that_reproduce_its_cells(pruned):
    ds = pruned
    cells = ("method", "level", "seed", "image")
    for regime, acc, loss in (("oneshot", "acc_oneshot", "loss"), ("finetuned", "acc_finetuned", "loss_finetuned")):
        c, li = ds[f"correct_{regime}"], ds[f"loss_{regime}_image"]
        assert c.dims == cells and li.dims == cells and c.dtype == bool and li.dtype == np.float32
        assert c.attrs["units"] == "1" and li.attrs["units"] == "nats" and c.attrs["long_name"]
        n = ds.sizes["image"]
        assert n == 24 and np.array_equal(100.0 * c.values.sum(-1) / n, ds[acc].values)  # exactly
        np.testing.assert_allclose(li.values.astype(np.float64).mean(-1), ds[loss].values, rtol=1e-6)
    assert np.array_equal(100.0 * ds["correct_base"].values.sum() / 24, float(ds["base_accuracy"]))
    # the same images for every cell: one seeded subset, its split indices stored
    assert len(set(ds["image"].values.tolist())) == 24
    # seed-free one-shot cells share their per-image outcomes
    mag = ds["correct_oneshot"].sel({"method": "magnitude"})  # not method=: that is sel's own keyword
    assert all(np.array_equal(mag.sel(seed=42).values, mag.sel(seed=s).values) for s in (123, 456))


def test_a_pruning_runs_contrasts_have_a_real_interval_or_say_why(pruned):
    ds = pruned
    assert "seeds" in ds["contrast_ci_low"].attrs["interval"] and ds["contrast_ci_high"].attrs["interval"]
    assert "3 seeds" in ds.attrs["contrast_interval"]
    seen = 0
    for r in ds.regime.values:
        for c in ds.contrast.values:
            mean, lo, hi = (float(ds[k].sel(regime=r, contrast=c)) for k in
                            ("contrast_mean", "contrast_ci_low", "contrast_ci_high"))
            said = str(ds["contrast_resamples"].sel(regime=r, contrast=c).values)
            if not np.isfinite(mean):
                assert said in (unc.NOT_MEASURED,) or said.startswith("no AUC")
                continue
            seen += 1
            # the estimate is still the mean over seeds of the per-seed AUC differences
            assert mean == pytest.approx(float(ds["contrast_diff"].sel(regime=r, contrast=c).mean()), abs=1e-9)
            if np.isfinite(lo) or np.isfinite(hi):
                assert lo < hi and lo <= mean <= hi and "resamples of the 3 seeds" in said
            else:
                assert said == unc.NO_VARIATION
    assert seen >= 4
