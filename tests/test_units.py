"""Units as tasks (issue 14): lesions by (layer, block of channels) and the gradient-geometry pass by image batch give
the same store as one unit per layer and one in-process pass; an interrupted run resumes only the unfinished units."""
import importlib
import shutil

import numpy as np
import pytest
import zarr

import chanaxis
from chanaxis import store
from chanaxis.stage import Context, run_stage

FAST = dict(n_null=1, n_perm=10, n_triplets=50, geometry_images=160)
LESION = dict(fraction=0.1, eval_images=8, batch_size=16)   # 2 variants per pass


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_resnet):
    """A store with metrics (structure included) whose geometry pass ran as three units of 64, 64 and 32 images."""
    from chanaxis.stages import metrics as M
    out = tmp_path_factory.mktemp("units") / "run.zarr"
    chanaxis.capture(tiny_resnet, "synthetic", out, n_calibration=160, chunk_images=80, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "GEOMETRY_UNIT_IMAGES", 64)
        M.metrics(out, progress=False, model=tiny_resnet, **FAST)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _lesion(tree_path):
    return chanaxis.open_run(tree_path)["lesion"].to_dataset().compute()


def _same(a, b):
    assert set(a.variables) == set(b.variables) and a.attrs == b.attrs
    for k in a.variables:
        x, y = a[k].values, b[k].values
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=k)
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12, err_msg=k)
        else:
            assert np.array_equal(x, y), k


# ---------------------------------------------------------------------------------------------------- lesions
def test_lesion_blocks_equal_one_unit_per_layer(run, tiny_resnet, tmp_path):
    from chanaxis.interventions.lesion import LesionStage
    whole, split = _copy(run, tmp_path / "whole.zarr"), _copy(run, tmp_path / "split.zarr")
    chanaxis.lesion(whole, progress=False, model=tiny_resnet, unit_channels=1000, **LESION)
    stage = LesionStage(unit_channels=3, **LESION)   # rounded up to 4: a multiple of the 2 variants per pass
    ctx = Context(model=tiny_resnet, progress=False)
    stage.prepare(split, ctx)
    units = stage.units(split)
    assert store.open_group(split)[store.LESION].attrs["unit_channels"] == 4
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys)) > 15   # several layers have more than 4 lesioned channels
    assert "layer/layer3.0.conv3/0-4" in keys and "layer/conv1.0" in keys
    run_stage(stage, split, ctx, order=lambda us: us[::-1])
    assert chanaxis.store.status(split)["lesion"] == "done"
    _same(_lesion(whole), _lesion(split))


def test_interrupted_lesion_resumes_only_unfinished_blocks(run, tiny_resnet, tmp_path, monkeypatch):
    from chanaxis.interventions.lesion import LesionStage
    L = importlib.import_module("chanaxis.interventions.lesion")
    ref = _copy(run, tmp_path / "ref.zarr")
    chanaxis.lesion(ref, progress=False, model=tiny_resnet, **LESION)
    path = _copy(run, tmp_path / "cut.zarr")
    calls = {"n": 0, "die": 5}
    real = L.layer_damages

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["die"]:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(L, "layer_damages", counting)
    with pytest.raises(KeyboardInterrupt):
        chanaxis.lesion(path, progress=False, model=tiny_resnet, unit_channels=2, **LESION)
    lg = store.open_group(path)[store.LESION]
    assert np.asarray(lg["block_done"][...]).sum() == 4 and lg.attrs["unit_channels"] == 2
    # a rerun with another block size keeps the one the run started with, and lists only the unfinished blocks
    stage = LesionStage(unit_channels=64, **LESION)
    ctx = Context(model=tiny_resnet, progress=False)
    stage.prepare(path, ctx)
    todo = stage.units(path)
    assert len(todo) == lg["block_done"].shape[0] - 4
    calls.update(n=0, die=None)
    run_stage(stage, path, ctx)
    assert calls["n"] == len(todo)
    _same(_lesion(ref), _lesion(path))


def test_lesion_resumes_a_run_started_with_one_unit_per_layer(run, tiny_resnet, tmp_path):
    """A /lesion left half done by a version with per-layer units (flat arrays + layer_done) keeps its layers."""
    from chanaxis.interventions.lesion import DAMAGE_VARS, LesionStage
    ref = _copy(run, tmp_path / "ref.zarr")
    chanaxis.lesion(ref, progress=False, model=tiny_resnet, **LESION)
    want = _lesion(ref)
    path = _copy(run, tmp_path / "old.zarr")
    stage = LesionStage(**LESION)
    config = stage.config(store.open_group(path))
    grp = store.open_group(path, mode="r+")
    lg = grp.require_group(store.LESION)
    lg.attrs["config"] = store.jsonable(config)
    names = list(dict.fromkeys(want.layer.values))
    for k in DAMAGE_VARS:   # the old layout: the first two layers done
        v = np.where(np.isin(want.layer.values, names[:2]), want[k].values, np.nan)
        store.new_array(lg, k, v.shape, ["unit"], "float64")[...] = v
    store.new_array(lg, "layer_done", (len(names),), ["layer"], "bool", chunks=(1,))[...] = \
        np.arange(len(names)) < 2
    store.new_array(lg, "run_mode", (len(names),), ["layer"], str, chunks=(1,))[...] = \
        np.asarray(want["run_mode"].values, object)
    store.set_status(grp, "lesion", "running")
    ctx = Context(model=tiny_resnet, progress=False)
    stage.prepare(path, ctx)
    assert len(stage.units(path)) == len(names) - 2
    run_stage(stage, path, ctx)
    _same(want, _lesion(path))


# ---------------------------------------------------------------------------------------------------- geometry
def test_geometry_units_equal_the_in_process_pass(run, tiny_resnet):
    from chanaxis.geometry import geometry_pass
    from chanaxis.progress import progress_bar
    grp = store.open_group(run)
    layers = [str(x) for x in grp[f"{store.GRAPH}/layer"][...]]
    assert [int(grp[store.geometry_part(b)].attrs["hi"]) for b in range(3)] == [64, 128, 160]
    assert store.geometry_part(3) not in grp
    with progress_bar(False) as bar:
        want = geometry_pass(run, grp, layers, {"geometry_images": 160}, tiny_resnet, bar)
    m = chanaxis.open_run(run)["metrics"].to_dataset()
    assert m.attrs["geometry"] == "computed"
    got = m["grad_cos"].values
    np.testing.assert_allclose(got, np.concatenate([want[l] for l in layers]), rtol=0, atol=1e-10)
    assert np.isfinite(got).sum() > 0.9 * got.size


def test_geometry_units_are_listed_and_resumed(run, tiny_resnet, tmp_path, monkeypatch):
    from chanaxis.stages import metrics as M
    monkeypatch.setattr(M, "GEOMETRY_UNIT_IMAGES", 64)
    path = _copy(run, tmp_path / "geo.zarr")
    before = chanaxis.open_run(path)["metrics"].to_dataset().compute()
    grp = zarr.open_group(str(path), mode="r+")
    del grp[store.geometry_part(0)]
    del grp[store.geometry_part(2)]
    del grp[store.metrics_part("layer2.0.conv1")]
    stage = M.MetricsStage(**FAST)
    ctx = Context(model=tiny_resnet, progress=False)
    stage.prepare(path, ctx)
    assert [u.key for u in stage.units(path)] == ["layer/layer2.0.conv1", "geometry/0", "geometry/2"]
    run_stage(stage, path, ctx)
    after = chanaxis.open_run(path)["metrics"].to_dataset().compute()
    np.testing.assert_allclose(after["grad_cos"].values, before["grad_cos"].values, rtol=0, atol=1e-12)


def test_geometry_skipped_without_gradients(run, tiny_resnet, tmp_path):
    from chanaxis.stages import metrics as M

    class NoGrad:   # as the ONNX adapter: no gradients declared
        def __init__(self, inner):
            self._inner, self.capabilities = inner, frozenset()

        def __getattr__(self, k):
            return getattr(self._inner, k)
    path = _copy(run, tmp_path / "nograd.zarr")
    grp = zarr.open_group(str(path), mode="r+")
    del grp[store.geometry_part()]
    stage = M.MetricsStage(**{**FAST, "geometry_images": 160})
    ctx = Context(model=NoGrad(tiny_resnet), progress=False)
    stage.prepare(path, ctx)
    assert not [u for u in stage.units(path) if u.key.startswith("geometry/")]
    run_stage(stage, path, ctx)
    m = chanaxis.open_run(path)["metrics"].to_dataset()
    assert m.attrs["geometry"] == "skipped (model without gradients)" and "grad_cos" not in m
