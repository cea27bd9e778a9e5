"""ONNX models on onnxruntime agree with the torch path: layer graph, captured correlations, metrics and lesions.

Each timm test network is exported with both exporters, BatchNorm folded and kept. BN parameters and statistics are
randomised first so that folding visibly rescales channels (positive scales: correlations keep their sign).
"""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import chanaxis
from chanaxis.adapters.onnx import export_onnx
from chanaxis.capabilities import require
from chanaxis.errors import CapabilityError, ChanaxisError
from chanaxis.reload import model_from_store

FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext"]
VARIANTS = [("dynamo", True), ("dynamo", False), ("legacy", True), ("legacy", False)]
CASES = [(f, e, fold) for f in FAMILIES for e, fold in VARIANTS]
IDS = [f"{f[5:]}-{e}-{'fold' if fold else 'keep'}" for f, e, fold in CASES]
N_CAL = 64
CORR_METRICS = ("peer_overlap", "peer_r2_full", "peer_r2_top8", "hull_score", "task_info", "redundancy_t",
                "synergy", "unique_t")


def _randomise_bn(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


class _Cache:
    def __init__(self, root):
        self.root, self.nets, self.files, self.stores = root, {}, {}, {}

    def net(self, family):
        if family not in self.nets:
            torch.manual_seed(0)
            m = chanaxis.load_model(family, num_classes=10, image_size=32)
            _randomise_bn(m.module, 1)
            self.nets[family] = m
        return self.nets[family]

    def onnx_path(self, family, exporter, fold):
        key = (family, exporter, fold)
        if key not in self.files:
            path = lambda f: self.root / f"{family}-{exporter}-{'fold' if f else 'keep'}.onnx"  # noqa: E731
            if exporter == "dynamo":  # one (slow) translation gives both graphs
                export_onnx(self.net(family), path(True), "dynamo", fold_bn=True, kept_path=path(False))
                self.files[(family, exporter, True)] = path(True)
                self.files[(family, exporter, False)] = path(False)
            else:
                self.files[key] = export_onnx(self.net(family), path(fold), "legacy", fold_bn=fold)
        return self.files[key]

    def model(self, family, exporter, fold):
        return chanaxis.load_model(str(self.onnx_path(family, exporter, fold)))

    def store(self, key, model):
        if key not in self.stores:
            out = self.root / f"{'-'.join(map(str, key))}.zarr"
            chanaxis.capture(model, "synthetic", out, n_calibration=N_CAL, chunk_images=N_CAL, progress=False)
            self.stores[key] = out
        return self.stores[key]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _Cache(tmp_path_factory.mktemp("onnx"))


def _close(actual, desired, tol=1e-4, what=""):
    """Agreement to `tol` on the scale of the values (float32 rounding grows with |logit| ~ 100 here)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=tol * max(1.0, float(np.abs(desired).max())),
                               err_msg=what)


def _partition(layers):
    """Coupling partition as a set of frozensets of (layer, channel), independent of how ids are numbered."""
    by_id = {}
    for l in layers:
        for c, gid in enumerate(l.group):
            by_id.setdefault(int(gid), set()).add((l.name, c))
    return {frozenset(s) for s in by_id.values()}


@pytest.mark.parametrize("family,exporter,fold", CASES, ids=IDS)
def test_layer_graph_matches_torch(cache, family, exporter, fold):
    tm, om = cache.net(family), cache.model(family, exporter, fold)
    tg, og = tm.graph, om.graph
    assert og.names == tg.names
    has_bn = any(l.norm == "bn" for l in tg.layers)
    assert og.folded_bn == (fold and has_bn)
    for a in tg.layers:
        b = og[a.name]
        for f in ("kind", "c_in", "c_out", "groups", "kernel", "stride", "out_hw", "layout", "depth", "consumers",
                  "macs"):
            assert getattr(b, f) == getattr(a, f), (a.name, f)
        if fold and a.norm == "bn":
            assert b.norm == "bn_folded" and b.mask_at == b.name  # the conv output already is the BN output
        else:
            assert (b.norm, b.norm_module, b.mask_at) == (a.norm, a.norm_module, a.mask_at), a.name
            np.testing.assert_allclose(og.filters(a.name), tg.filters(a.name), rtol=0, atol=1e-6)
    assert og.other_macs == tg.other_macs and og.total_macs == tg.total_macs
    assert _partition(og.layers) == _partition(tg.layers)
    assert om.num_classes == 10 and om.input_size == (3, 32, 32)


@pytest.mark.parametrize("family,exporter,fold", CASES, ids=IDS)
def test_capture_and_lesions_match_torch(cache, family, exporter, fold):
    """BN folded: both models through the capture stage, correlations compared (scales differ). BN kept: the raw
    outputs themselves must equal torch's, a stronger check that needs no store (zarr I/O is this file's cost)."""
    tm, om = cache.net(family), cache.model(family, exporter, fold)
    if fold:
        ts = chanaxis.open_run(cache.store((family,), tm))
        os_ = chanaxis.open_run(cache.store((family, exporter, fold), om))
        assert os_.attrs["folded_bn"] == om.graph.folded_bn
        _close(os_["samples/margin"].values, ts["samples/margin"].values)
        for name in tm.graph.names:
            a, b = ts[f"layers/{name}/local"].values, os_[f"layers/{name}/local"].values
            live = a.std(0) > 1e-6 * (np.abs(a).max() + 1e-12)  # constant channels have no correlation
            ca, cb = np.corrcoef(a[:, live], rowvar=False), np.corrcoef(b[:, live], rowvar=False)
            np.testing.assert_allclose(cb, ca, atol=1e-4, rtol=0, err_msg=name)
            if not om.graph.folded_bn:
                _close(b, a, what=name)
    else:
        torch.manual_seed(4)
        x = torch.randn(16, 3, 32, 32)
        lt, ct = tm.run(x, capture=tm.graph.names)
        lo, co = om.run(x, capture=om.graph.names)
        _close(lo.numpy(), lt.numpy())
        for name, t in ct.items():
            assert co[name].shape == t.shape
            _close(co[name].numpy(), t.numpy(), what=name)

    # lesions: K variants per layer in one pass, logits and margin damage as in torch
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    from chanaxis.stages.capture import logit_margin
    base = logit_margin(tm.run(x)[0], y)
    g = tm.graph
    for layer in (g.layers[0], g.layers[len(g) // 2], g.layers[-1]):
        masks = torch.ones(3, layer.c_out)
        masks[0, 0] = 0
        masks[1, ::2] = 0
        masks[2, :] = 0
        lt, _ = tm.run(x, masks={layer.name: masks})
        lo, _ = om.run(x, masks={layer.name: masks})
        assert lo.shape == (3, 8, 10)
        _close(lo.numpy(), lt.numpy(), what=layer.name)
        for k in range(3):
            dt, do = base - logit_margin(lt[k], y), base - logit_margin(lo[k], y)
            _close(do.numpy(), dt.numpy(), what=layer.name)


def _metrics(path):
    """Every layer's metrics from its captured samples: the metrics stage's own per-layer function and defaults
    (the stage adds resumable zarr parts, whose I/O would dominate this test's time)."""
    from chanaxis.estimators.stats import Moments
    from chanaxis.stages.metrics import MetricsParams, layer_metrics
    tree = chanaxis.open_run(path)
    margin = tree["samples/margin"].values.astype(np.float64)
    out = {}
    for name in tree["graph/layer"].values:
        ds = tree[f"layers/{name}"]
        y = ds["local"].values.astype(np.float64)
        t = margin[ds["image_of_sample"].values]
        m = Moments.from_sums(len(y), y.sum(0), y.T @ y, t.sum(), t @ t, y.T @ t)
        out[name] = layer_metrics(m, ds["weight"].values.astype(np.float64), ("local", "target"), MetricsParams().to_dict())
    return out


# the BN-folded export of each family (both exporters covered): metrics cost more than captures
@pytest.mark.parametrize("family,exporter", [("test_resnet", "dynamo"), ("test_efficientnet", "legacy"),
                                             ("test_convnext", "dynamo")], ids=["resnet", "efficientnet", "convnext"])
def test_correlation_metrics_match_torch(cache, family, exporter):
    tm, om = cache.net(family), cache.model(family, exporter, True)
    mt = _metrics(cache.store((family,), tm))
    mo = _metrics(cache.store((family, exporter, True), om))
    assert list(mo) == list(mt)
    scale_free = not om.graph.folded_bn  # ConvNeXt has no BN: the scale-dependent metrics agree too
    for name in mt:
        for var in CORR_METRICS + (("signal_power", "input_capture", "weight_norm_sq") if scale_free else ()):
            _close(mo[name][var], mt[name][var], what=f"{name} {var}")
        assert np.mean(mo[name]["hull_size"] == mt[name]["hull_size"]) > 0.95  # greedy picks may swap at ties


def test_run_contract(cache):
    om = cache.model("test_resnet", "legacy", False)
    tm = cache.net("test_resnet")
    layer = om.graph.layers[3]
    for n in (1, 5):  # dynamic batch
        x = torch.randn(n, 3, 32, 32)
        lo, caps = om.run(x, capture={layer.name: lambda t: (t.shape, t.mean((2, 3)))})
        shape, gap = caps[layer.name]
        assert lo.shape == (n, 10) and tuple(shape) == (n, layer.c_out, *layer.out_hw)
        _, ct = tm.run(x, capture=[layer.name])
        np.testing.assert_allclose(gap.numpy(), ct[layer.name].mean((2, 3)).numpy(), atol=1e-5)
    # a (C,) mask next to a (K, C) mask applies to every variant
    other = om.graph.layers[5]
    x = torch.randn(2, 3, 32, 32)
    one = torch.ones(other.c_out)
    one[:3] = 0
    both = {layer.name: torch.ones(2, layer.c_out), other.name: one}
    np.testing.assert_allclose(om.run(x, masks=both)[0].numpy(), tm.run(x, masks=both)[0].numpy(), atol=1e-5)
    assert om.capabilities == frozenset()
    with pytest.raises(CapabilityError, match="torch model"):
        om.run(x, grad=True)
    with pytest.raises(CapabilityError, match="Taylor scores.*torch model"):
        require(om, "gradients", what="Taylor scores")
    require(tm, "gradients", what="Taylor scores")  # torch models pass
    with pytest.raises(ChanaxisError, match="unknown layer"):
        om.run(x, masks={"nope": one})
    assert om.weights_sha256() == cache.model("test_resnet", "legacy", False).weights_sha256()
    assert om.weights_sha256() != cache.model("test_resnet", "legacy", True).weights_sha256()


def test_store_reloads_the_onnx_model(cache):
    om = cache.model("test_efficientnet", "legacy", True)
    path = cache.store(("test_efficientnet", "legacy", True), om)
    again = model_from_store(path)
    assert again.spec["adapter"] == "onnx" and again.weights_sha256() == om.weights_sha256()
    assert again.graph.names == om.graph.names


def test_cli_capture_from_onnx(cache, tmp_path):
    from chanaxis.cli.main import main
    path = cache.onnx_path("test_resnet", "legacy", False)
    out = tmp_path / "cli.zarr"
    assert main(["capture", str(path), "--dataset", "synthetic", "--out", str(out), "--n-calibration", "32",
                 "--quiet"]) == 0
    assert chanaxis.open_run(out)["samples"].sizes["image"] == 32


# --------------------------------------------------------------------------- bad input: one line each
def _edit(src, dst, fn):
    mp = onnx.load(str(src))
    fn(mp)
    onnx.save(mp, str(dst))
    return dst


def test_not_onnx_and_truncated(cache, tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ChanaxisError, match="not .*ONNX") as e:
        chanaxis.load_model(str(text))
    assert "\n" not in str(e.value)
    data = cache.onnx_path("test_resnet", "legacy", False).read_bytes()
    for cut in (len(data) // 2, len(data) - 7):
        trunc = tmp_path / f"cut{cut}.onnx"
        trunc.write_bytes(data[:cut])
        with pytest.raises(ChanaxisError, match="truncated") as e:
            chanaxis.load_model(str(trunc))
        assert "\n" not in str(e.value)
    with pytest.raises(ChanaxisError, match="no ONNX file"):
        chanaxis.load_model(str(tmp_path / "missing.onnx"))


def test_graph_without_conv(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(mlp, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ChanaxisError, match="no layer to analyse"):
        chanaxis.load_model(str(path))


def test_unsupported_op_is_named(cache, tmp_path):
    def swap(mp):
        relu = next(n for n in mp.graph.node if n.op_type == "Relu")
        relu.op_type = "Hardmax"  # a valid ONNX op that mixes positions: channels cannot be followed through it
        relu.name = "the_odd_node"
    bad = _edit(cache.onnx_path("test_resnet", "legacy", False), tmp_path / "odd.onnx", swap)
    with pytest.raises(ChanaxisError, match="Hardmax at node 'the_odd_node'"):
        chanaxis.load_model(str(bad))


def test_input_that_does_not_fit(cache, tmp_path):
    src = cache.onnx_path("test_resnet", "legacy", False)
    with pytest.raises(ChanaxisError, match="takes 32×32 images but 64×64"):
        chanaxis.load_model(str(src), image_size=64)
    with pytest.raises(ChanaxisError, match="outputs 10 classes but 100"):
        chanaxis.load_model(str(src), num_classes=100, image_size=32)

    def gray(mp):
        mp.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(ChanaxisError, match="1 channels"):
        chanaxis.load_model(str(_edit(src, tmp_path / "gray.onnx", gray)))

    def bigger(mp):
        for d in mp.graph.input[0].type.tensor_type.shape.dim[2:]:
            d.dim_value = 48
    big = chanaxis.load_model(str(_edit(src, tmp_path / "big.onnx", bigger)))  # global pooling: runs at 48 px
    assert big.input_size == (3, 48, 48)
    from chanaxis.data import load_dataset
    with pytest.raises(ChanaxisError, match="48×48 images but 'synthetic' gives 32×32"):
        chanaxis.capture(big, load_dataset("synthetic", image_size=32), tmp_path / "x.zarr", progress=False)


def test_cuda_request(cache):
    import onnxruntime as ort
    path = str(cache.onnx_path("test_resnet", "legacy", False))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        m = chanaxis.load_model(path, device="cuda")
        ref = chanaxis.load_model(path)
        x = torch.randn(4, 3, 32, 32)
        np.testing.assert_allclose(m.run(x)[0].numpy(), ref.run(x)[0].numpy(), atol=1e-4)
    else:
        with pytest.raises(ChanaxisError, match="CUDA was asked for.*--device cpu"):
            chanaxis.load_model(path, device="cuda")


class _Pinned(nn.Module):
    """A net whose export pins the batch size (a constant Reshape), ending in a Softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3)).reshape(2, 8)
        return torch.softmax(self.fc(y), -1)


def test_fixed_batch_and_softmax_export(tmp_path):
    torch.manual_seed(0)
    net = _Pinned().eval()
    path = tmp_path / "pinned.onnx"
    torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(path), dynamo=False)
    om = chanaxis.load_model(str(path))
    assert om.graph.names == ["conv"] and om.num_classes == 10
    x = torch.randn(5, 3, 16, 16)  # runs in slices of 2, the last one padded
    with torch.no_grad():
        want = torch.cat([net.fc(torch.relu(net.conv(x[i:i + 2])).mean((2, 3))) for i in range(0, 4, 2)] +
                         [net.fc(torch.relu(net.conv(x[4:])).mean((2, 3)))])
    logits, caps = om.run(x, capture=["conv"])
    np.testing.assert_allclose(logits.numpy(), want.numpy(), atol=1e-5)  # the logits, not the probabilities
    assert caps["conv"].shape == (5, 8, 16, 16)
