"""The metrics stage over a run store: agreement with direct numpy, chunking invariance, determinism, resume."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

import chanaxis
from chanaxis.errors import ChanaxisError
from chanaxis.estimators.structure import grad_cos
from chanaxis.moments import compute as layer_moments
from chanaxis.stages.metrics import metrics

FAST = dict(n_null=1, n_perm=20, n_triplets=200, geometry_images=64)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_resnet):
    d = tmp_path_factory.mktemp("metrics")
    a = chanaxis.capture(tiny_resnet, "synthetic", d / "a.zarr", n_calibration=96, chunk_images=32, progress=False)
    b = chanaxis.capture(tiny_resnet, "synthetic", d / "b.zarr", n_calibration=96, chunk_images=40, progress=False)
    metrics(a, progress=False, model=tiny_resnet, **FAST)
    metrics(b, progress=False, model=tiny_resnet, workers=1, **FAST)
    return a, b


def test_moments_equal_numpy(stores):
    tree = chanaxis.open_run(stores[0])
    name = "layer2.0.conv1"
    Y = tree[f"layers/{name}/local"].values.astype(np.float64)
    T = tree["samples/margin"].values.astype(np.float64)[tree[f"layers/{name}/image_of_sample"].values]
    m = layer_moments(stores[0], name)
    np.testing.assert_allclose(m.cov_yy, np.cov(Y.T, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m.cov_yt, ((Y - Y.mean(0)) * (T - T.mean())[:, None]).mean(0), rtol=1e-9, atol=1e-9)


def test_metrics_node_matches_direct_formulas(stores):
    tree = chanaxis.open_run(stores[0])
    ds = tree["metrics"].to_dataset().compute()
    name = "layer2.0.conv1"
    sel = ds.layer.values == name
    Y = tree[f"layers/{name}/local"].values.astype(np.float64)
    T = tree["samples/margin"].values.astype(np.float64)[tree[f"layers/{name}/image_of_sample"].values]
    J = Y.var(0)
    np.testing.assert_allclose(ds["signal_power"].values[sel], J, rtol=1e-9)
    np.testing.assert_allclose(ds["input_capture"].values[sel], 0.5 * np.log1p(J / np.median(J)), rtol=1e-9)
    rho_t = np.clip([np.corrcoef(Y[:, i], T)[0, 1] for i in range(Y.shape[1])], -0.999, 0.999)
    np.testing.assert_allclose(ds["task_info"].values[sel], -0.5 * np.log(1 - rho_t ** 2), atol=1e-9)
    R = np.clip(np.corrcoef(Y.T), -0.999, 0.999)
    np.fill_diagonal(R, 0)
    np.testing.assert_allclose(ds["peer_overlap"].values[sel], (-0.5 * np.log(1 - R ** 2)).sum(1) / Y.shape[1],
                               atol=1e-9)
    W = tree[f"layers/{name}/weight"].values.astype(np.float64)
    np.testing.assert_allclose(ds["magnitude"].values[sel], np.linalg.norm(W, axis=1), rtol=1e-6)
    for var in ("input_capture", "task_info", "synergy", "hull_score", "peer_overlap"):
        assert ds[var].attrs["units"] in ("nats", "1") and ds[var].attrs["long_name"]
    assert set(ds.data_vars) >= {"input_capture", "signal_power", "weight_norm_sq", "peer_overlap", "task_info",
                                 "redundancy_t", "synergy", "unique_t", "peer_r2_full", "peer_r2_top8",
                                 "hull_size", "hull_score", "magnitude", "cluster_local", "cluster_target",
                                 "grad_cos", "dead"}
    assert np.isfinite(ds["task_info"].values).all() and np.isfinite(ds["synergy"].values).all()


def test_same_result_for_other_chunking(stores):
    a, b = (chanaxis.open_run(s) for s in stores)
    ma, mb = a["metrics"].to_dataset().compute(), b["metrics"].to_dataset().compute()
    for var in ma.data_vars:
        np.testing.assert_allclose(ma[var].values, mb[var].values, rtol=1e-7, atol=1e-9, err_msg=var)
    sa, sb = a["structure"].to_dataset().compute(), b["structure"].to_dataset().compute()
    for var in sa.data_vars:
        np.testing.assert_allclose(sa[var].values, sb[var].values, rtol=1e-7, atol=1e-9, err_msg=var)


def test_rerun_is_deterministic_and_resumes(stores, tiny_resnet):
    path = stores[0]
    before = chanaxis.open_run(path)["metrics"].to_dataset().compute()
    struct_before = chanaxis.open_run(path)["structure"].to_dataset().compute()
    grp = zarr.open_group(str(path), mode="r+")
    del grp["metrics_parts/layer3.0.conv2"]  # as if killed while computing this layer
    metrics(path, progress=False, model=tiny_resnet, **FAST)
    after = chanaxis.open_run(path)["metrics"].to_dataset().compute()
    for var in before.data_vars:
        np.testing.assert_array_equal(before[var].values, after[var].values, err_msg=var)
    struct_after = chanaxis.open_run(path)["structure"].to_dataset().compute()
    for var in struct_before.data_vars:
        np.testing.assert_array_equal(struct_before[var].values, struct_after[var].values, err_msg=var)
    assert chanaxis.open_run(path).attrs["status"]["metrics"] == "done"


def test_structure_node(stores):
    s = chanaxis.open_run(stores[0])["structure"].to_dataset().compute()
    n_layers = s.sizes["layer"]
    assert s["spearman"].shape == (n_layers, s.sizes["metric"], s.sizes["metric"])
    diag = np.diagonal(s["spearman_mean"].values)
    assert np.allclose(diag[np.isfinite(diag)], 1.0)
    assert ((s["ari"].values >= -1) & (s["ari"].values <= 1)).all()
    assert np.isfinite(s["q_r"].values).all() and np.isfinite(s["q_s"].values).all()
    assert list(s["axis_pair"].values) == ["local->local", "target->target", "local->target", "target->local"]
    assert np.isfinite(s["propagation"].values).all() and s["propagation"].attrs["edges"] > 0


def test_grad_cos_equals_explicit_patch_covariance(stores, tiny_resnet):
    """The geometry pass (Σ_X w accumulated as Cov(x, Wx)) equals forming Σ_X from the patches explicitly."""
    path = stores[0]
    tree = chanaxis.open_run(path)
    name = "layer2.0.conv2"
    layer = tiny_resnet.graph[name]
    conv = dict(tiny_resnet.module.named_modules())[name]
    handle = chanaxis.load_dataset("synthetic")
    idx = tree["samples/dataset_index"].values[:64]
    pos = tree[f"layers/{name}/position"].values.reshape(96, -1)[:64]
    T = tree["samples/margin"].values[:64]
    seen = {}
    h = conv.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    tiny_resnet.run(torch.stack([handle.dataset[int(i)][0] for i in idx]))
    h.remove()
    cols = F.unfold(seen["x"], conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    X = np.concatenate([cols[r][:, pos[r]].T.numpy() for r in range(64)]).astype(np.float64)
    t = np.repeat(T, pos.shape[1]).astype(np.float64)
    sigma_x = np.cov(X.T, bias=True)
    c = ((X - X.mean(0)) * (t - t.mean())[:, None]).mean(0)
    want = grad_cos(conv.weight.detach().numpy().reshape(layer.c_out, -1), sigma_x, c)
    ds = tree["metrics"].to_dataset()
    got = ds["grad_cos"].values[ds.layer.values == name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_bad_input(tmp_path, stores):
    with pytest.raises(ChanaxisError, match="only .* must be one of local, target, structure, not .locl."):
        metrics(stores[0], only=["locl"], progress=False)
    with pytest.raises(ChanaxisError, match="not .bogus."):
        metrics(stores[0], only="local,bogus", progress=False)
    with pytest.raises(ChanaxisError, match="did you mean .n_null."):
        metrics(stores[0], n_nul=3, progress=False)
    with pytest.raises(ChanaxisError, match="no run store"):
        metrics(tmp_path / "nothing.zarr", progress=False)


@pytest.mark.parametrize("cin,cout,k,s,p,d,g,size", [(6, 8, 3, 1, 1, 1, 1, 9), (6, 8, 3, 2, 1, 1, 2, 9),
                                                    (4, 4, 3, 1, 2, 2, 4, 8), (3, 8, 7, 2, 3, 1, 1, 16),
                                                    (4, 8, (1, 3), 1, (0, 1), 1, 1, 6)])
def test_geometry_patches_equal_unfold(cin, cout, k, s, p, d, g, size):
    """The geometry pass gathers only the sampled windows; they equal F.unfold's columns at those positions."""
    from types import SimpleNamespace

    from chanaxis.geometry import patches
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, k, s, p, d, g)
    x = torch.randn(2, cin, size, size)
    out = conv(x)
    pos = torch.randint(0, out.shape[2] * out.shape[3], (2, 5))
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    want = cols.gather(2, pos[:, None, :].expand(-1, cols.shape[1], -1)).permute(0, 2, 1)
    got = patches(conv, SimpleNamespace(kind="conv", groups=g, out_hw=tuple(out.shape[2:])), x, pos)
    assert torch.equal(got, want.reshape(-1, g, cols.shape[1] // g))
