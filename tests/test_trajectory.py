"""The trajectory stage: one store over checkpoints, equal to single-checkpoint runs, incremental, bad folders."""
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import spearmanr

import chanaxis
from chanaxis.errors import ChanaxisError
from chanaxis.stage import Context, run_stage
from chanaxis.stages.capture import capture
from chanaxis.stages.metrics import metrics
from chanaxis.stages.trajectory import TrajectoryStage, epoch_of, trajectory
from chanaxis.training import train

CAL = dict(n_calibration=48, spatial_samples=4, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("traj") / "run"
    train("test_resnet", "synthetic", out, epochs=2, train_subset=128, batch_size=32, max_batches_per_epoch=2,
          eval_subset=32, progress=False)
    path = trajectory(out, **CAL, geometry_images=16, progress=False)
    return out, path


def _metrics_of(path):
    return chanaxis.open_run(path)["metrics"].to_dataset().load()


def test_store_has_a_checkpoint_dimension(run):
    out, path = run
    tree = chanaxis.open_run(path)
    assert tree.attrs["status"]["trajectory"] == "done"
    m = tree["metrics"].to_dataset()
    assert list(m["checkpoint"].values) == [0, 1, 2]
    assert m["input_capture"].dims == ("checkpoint", "unit") and m["hull_members"].dims[0] == "checkpoint"
    tr = tree["trajectory"].to_dataset().load()
    layers = list(dict.fromkeys(str(x) for x in m["layer"].values))
    assert [str(x) for x in tr["layer"].values] == layers
    assert tr["coupling_ix_it"].dims == ("checkpoint", "layer") and tr["coupling_ix_it"].attrs["units"]
    assert tr["cross_spearman"].dims == ("checkpoint", "layer", "local_metric", "target_metric")
    assert np.isfinite(tr["coupling_ix_it_mean"].values).all()
    last = tr["rank_stability"].sel(checkpoint=2).values  # the last against itself: 1, or NaN for a constant metric
    assert np.isfinite(last).any() and np.allclose(last[np.isfinite(last)], 1.0)
    assert tr["rank_stability_mean"].sel(checkpoint=0, metric="magnitude") < 1.0
    assert set(tr["axis"].values) == {"local", "target"}
    manifest = chanaxis.checkpoints.read_manifest(out)
    assert list(tr["eval_acc"].values) == [h["eval_acc"] for h in manifest["history"]]
    assert tr["eval_acc"].attrs["units"] == "%" and tr["eval_loss"].attrs["units"] == "nats"
    assert "grad_cos" in tr and np.isfinite(tr["grad_cos_mean"].values).all()
    assert ((0 <= tr["calibration_acc"]) & (tr["calibration_acc"] <= 100)).all()


def test_cli_rerun_reuses_everything_and_prints_the_table(run, capsys):
    out, path = run
    from chanaxis.cli.main import main
    before = chanaxis.open_run(path)["metrics/input_capture"].values
    assert main(["trajectory", str(out), "--n-calibration", "48", "--spatial-samples", "4", "--geometry-images", "16",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "trajectory" in text and "within-layer Spearman" in text and "grad_cos" in text
    np.testing.assert_array_equal(chanaxis.open_run(path)["metrics/input_capture"].values, before)


def test_each_checkpoint_equals_a_separate_run(run, tmp_path):
    out, path = run
    traj = _metrics_of(path)
    tr = chanaxis.open_run(path)["trajectory"].to_dataset().load()
    for e in (0, 2):  # epoch 1 is computed separately by the folder test below
        model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32,
                                    checkpoint=out / f"checkpoints/epoch_{e:04d}.pt")
        single = capture(model, "synthetic", tmp_path / f"single{e}.zarr", progress=False, **CAL)
        metrics(single, only=("local", "target"), progress=False)
        ref = _metrics_of(single)
        got = traj.sel(checkpoint=e)
        for k in ref.data_vars:
            np.testing.assert_array_equal(got[k].values, ref[k].values, err_msg=f"{k} at epoch {e}")
        # the coupling is the within-layer Spearman of I_X and I(T;Y), averaged over layers
        layer = np.asarray([str(x) for x in ref["layer"].values])
        per_layer = [spearmanr(ref["input_capture"].values[layer == l], ref["task_info"].values[layer == l])[0]
                     for l in dict.fromkeys(layer)]
        np.testing.assert_allclose(tr["coupling_ix_it"].sel(checkpoint=e).values, np.nan_to_num(per_layer),
                                   atol=1e-9)
        acc = 100 * float(chanaxis.open_run(single)["samples/correct"].values.mean())
        assert float(tr["calibration_acc"].sel(checkpoint=e)) == pytest.approx(acc)


def test_checkpoints_in_reversed_order_give_the_same_store(run, tmp_path):
    out, path = run
    ran = []
    rev = run_stage(TrajectoryStage(**CAL, geometry_images=16), tmp_path / "reversed.zarr",
                    Context(progress=False, run_dir=out), order=lambda units: ran.extend(units[::-1]) or ran)
    assert [u.key for u in ran] == ["checkpoint/2", "checkpoint/1", "checkpoint/0"]
    for node in ("metrics", "trajectory"):
        a, b = (chanaxis.open_run(p)[node].to_dataset().load() for p in (path, rev))
        xr.testing.assert_equal(a, b)


def test_the_architecture_is_built_once(run, tmp_path, monkeypatch):
    out, _ = run
    import chanaxis.registry
    built, real = [], chanaxis.registry.load_model
    monkeypatch.setattr(chanaxis.registry, "load_model", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    path = trajectory(out, out=tmp_path / "once.zarr", **CAL, geometry_images=16, progress=False)
    assert list(_metrics_of(path)["checkpoint"].values) == [0, 1, 2] and built == ["test_resnet"]


def test_folder_of_state_dicts_is_incremental(run, tmp_path, monkeypatch):
    out, path = run
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(out / "checkpoints/epoch_0000.pt", folder / "ckpt-0.pth")
    shutil.copy(out / "checkpoints/epoch_0002.pt", folder / "epoch_0002.pt")
    shutil.copy(out / "checkpoints/best.pt", folder / "best.pt")  # no epoch number: ignored
    with pytest.raises(ChanaxisError, match="--model"):
        trajectory(folder, dataset="synthetic", **CAL, progress=False)
    # per-checkpoint stores of the same weights and options are reused wherever they were made
    for e in (0, 2):
        shutil.copytree(out / f"trajectory/epoch_{e:04d}.zarr", folder / f"trajectory/epoch_{e:04d}.zarr")
    calls = []
    import chanaxis.stages.capture as cap_mod
    import chanaxis.stages.metrics as met_mod
    for cls, fn in ((cap_mod.CaptureStage, "capture"), (met_mod.MetricsStage, "metrics")):
        real = cls.prepare
        monkeypatch.setattr(cls, "prepare", lambda self, run, ctx, real=real, fn=fn: calls.append((fn, str(run)))
                            or real(self, run, ctx))
    first = trajectory(folder, dataset="synthetic", model="test_resnet", **CAL, grad_cos=False, progress=False)
    assert calls == [] and list(_metrics_of(first)["checkpoint"].values) == [0, 2]
    shutil.copy(out / "checkpoints/epoch_0001.pt", folder / "epoch_1.pt")
    again = trajectory(folder, dataset="synthetic", model="test_resnet", **CAL, grad_cos=False, progress=False)
    new = str(folder / "trajectory" / "epoch_0001.zarr")
    assert calls == [("capture", new), ("metrics", new)]  # only the new checkpoint was computed
    m = _metrics_of(again)
    assert list(m["checkpoint"].values) == [0, 1, 2] and "grad_cos" not in m
    ref = _metrics_of(path)
    for k in ("input_capture", "task_info", "hull_score", "synergy", "hull_members"):
        np.testing.assert_array_equal(m[k].values, ref[k].values)
    tr, tr_ref = (chanaxis.open_run(p)["trajectory"].to_dataset().load() for p in (again, path))
    np.testing.assert_array_equal(tr["coupling_ix_it"].values, tr_ref["coupling_ix_it"].values)
    assert np.isnan(tr["eval_acc"].values).all()  # no manifest: the evaluation accuracy is unknown
    with pytest.raises(ChanaxisError, match="another config"):
        trajectory(folder, dataset="synthetic", model="test_resnet", **{**CAL, "n_calibration": 40}, grad_cos=False,
                   progress=False)


def test_bad_checkpoint_folders(run, tmp_path, capsys):
    out, _ = run
    bad = tmp_path / "mixed"
    bad.mkdir()
    shutil.copy(out / "checkpoints/epoch_0000.pt", bad / "epoch_0.pt")
    other = chanaxis.load_model("test_resnet", num_classes=5, image_size=32).module.state_dict()
    torch.save(other, bad / "epoch_1.pt")
    with pytest.raises(ChanaxisError, match="epoch_1.pt"):
        trajectory(bad, dataset="synthetic", model="test_resnet", **CAL, progress=False)
    from chanaxis.cli.main import main
    assert main(["trajectory", str(bad), "-d", "synthetic", "--model", "test_resnet", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "epoch_1.pt" in err and len([l for l in err.splitlines() if l.strip()]) == 1
    with pytest.raises(ChanaxisError, match="epoch_0.pt.*does not fit"):  # a model object is checked up front
        trajectory(bad, dataset="synthetic", model=chanaxis.load_model("test_resnet", num_classes=5, image_size=32),
                   **CAL, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ChanaxisError, match="no checkpoints"):
        trajectory(empty, dataset="synthetic", model="test_resnet", progress=False)
    shutil.copy(out / "checkpoints/epoch_0000.pt", bad / "ckpt_1.pth")
    with pytest.raises(ChanaxisError, match="two checkpoints for epoch 1"):
        trajectory(bad, dataset="synthetic", model="test_resnet", progress=False)
    with pytest.raises(ChanaxisError, match="not a folder"):
        trajectory(tmp_path / "nowhere", dataset="synthetic", model="test_resnet", progress=False)


def test_epoch_numbers_from_file_names(tmp_path):
    from pathlib import Path
    assert [epoch_of(Path(n)) for n in ("epoch_3.pt", "epoch_0003.pt", "ckpt-3.pth", "run7_e12.safetensors")] == \
        [3, 3, 3, 12]
    assert epoch_of(Path("best.pt")) is None and epoch_of(Path("state.pt")) is None
