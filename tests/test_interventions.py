"""Interventions: suffix lesions = full-forward lesions, pruning masks = removal, analytic MACs, AUC, bad input."""
import copy
import importlib
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import chanaxis
from chanaxis.errors import CapabilityError, ChanaxisError
from chanaxis.evaluation import evaluate, model_forward, tensor_batches
from chanaxis.interventions import curves, lesion, prune
from chanaxis.interventions.lesion import layer_damages
from chanaxis.interventions.masks import PruningPlan, lesion_variants, random_keep, zero_pruned
from chanaxis.interventions.replace import replacement_matrix, replacer
from chanaxis.interventions.suffix import SuffixRunner, naive_lesion
from chanaxis.estimators.stats import Moments


@pytest.fixture(scope="module", params=["test_resnet", "test_efficientnet", "test_convnext"])
def tiny(request):
    torch.manual_seed(0)
    return chanaxis.load_model(request.param, num_classes=10, image_size=32)


def _randomise_bn(module, seed=0):
    """timm zero-initialises some BN γ (and ConvNeXt's layer scale is 1e-6): randomise them so no lesion is
    trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_suffix_lesion_equals_full_forward(tiny):
    _randomise_bn(tiny.module)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    worst, moved = 0.0, 0
    base, _ = tiny.run(x)
    for layer in tiny.graph.layers:
        r = SuffixRunner(tiny, layer.name)
        assert r.mode == "suffix", r.reason
        masks = lesion_variants(layer.c_out, [0, layer.c_out - 1])
        got = r.run(r.prefix(x), mask=masks)
        want = naive_lesion(tiny, x, layer.name, masks)
        worst = max(worst, float((got - want).abs().max()))
        moved += int((want - base).abs().max() > 1e-4)
    assert worst <= 1e-5
    assert moved >= len(tiny.graph) // 2  # the lesions really change the output


def test_suffix_replacement_equals_full_forward_hook(tiny):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(0)
    for layer in (tiny.graph.layers[1], tiny.graph.layers[-1]):  # ConvNeXt: [-1] is an MLP fc1 (channels last)
        c = layer.c_out
        Y = rng.standard_normal((200, c))
        mom = Moments.from_samples(Y, rng.standard_normal(200))
        t, B, b = replacement_matrix(mom, [0, 1, 2], [[1, 2], [0], []])
        fn = replacer(t, B, b, layer.layout)
        fast = SuffixRunner(tiny, layer.name)
        slow = SuffixRunner(tiny, layer.name, use_fx=False)
        assert slow.mode == "full_forward"
        got = fast.run(fast.prefix(x), replace=fn, k=3)
        want = slow.run(slow.prefix(x), replace=fn, k=3)
        assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_batched_variants_equal_separate_runs(tiny):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layer = tiny.graph.layers[len(tiny.graph) // 2]
    r = SuffixRunner(tiny, layer.name)
    cache = r.prefix(x)
    masks = lesion_variants(layer.c_out, [0, 1, 3])
    batched = r.run(cache, mask=masks)
    assert batched.shape == (3, 2, 10)
    for k in range(3):
        assert torch.allclose(batched[k], r.run(cache, mask=masks[k:k + 1])[0], atol=1e-6)
    assert torch.equal(r.run(cache, mask=masks[:1]), r.run(cache, mask=masks[:1]))  # the cache is never modified


def test_pruning_masks_remove_channels_exactly(tiny):
    """Masked run = zeroed weights; consumers see exact zeros on dead inputs; dead input slices carry nothing."""
    _randomise_bn(tiny.module, 4)
    plan = PruningPlan(tiny)
    eff = plan.effective(random_keep(plan, 0.4, seed=1))
    masks = plan.masks(eff)
    assert masks
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    mods = dict(tiny.module.named_modules())
    seen = {}
    hooks = [mods[n].register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, i[0].detach().clone()))
             for n in eff.in_live]
    got, _ = tiny.run(x, masks=masks)
    for h in hooks:
        h.remove()
    checked = 0
    for n, live in eff.in_live.items():
        dead = torch.as_tensor(np.flatnonzero(~live))
        if dead.numel():
            axis = 1 if isinstance(mods[n], nn.Conv2d) else -1
            assert torch.count_nonzero(seen[n].index_select(axis, dead)) == 0, n
            checked += 1
    assert checked > 0
    net = copy.deepcopy(tiny.module).eval()
    zero_pruned(net, tiny.graph, eff)
    with torch.no_grad():
        assert torch.allclose(net(x), got, atol=1e-5, rtol=0)
    noisy = copy.deepcopy(tiny)
    nmods = dict(noisy.module.named_modules())
    with torch.no_grad():
        for n, live in eff.in_live.items():
            dead = np.flatnonzero(~live)
            if dead.size and getattr(nmods[n], "groups", 1) == 1:
                nmods[n].weight[:, dead] += 1.0
    got_noisy, _ = noisy.run(x, masks=masks)
    assert torch.equal(got_noisy, got)  # whatever the dead input slices hold, it never reaches the output
    unmasked, _ = noisy.run(x)
    assert not torch.allclose(unmasked, got, atol=1e-3)


def test_efficientnet_rules():
    m = chanaxis.load_model("mobilenetv2_050", num_classes=10, image_size=32)
    plan = PruningPlan(m)
    assert plan.prunable and all(n.rsplit(".", 1)[-1] in ("conv_pw", "conv_pwl", "conv_head") for n in plan.prunable)
    pw = next(n for n in plan.prunable if n.endswith("conv_pw") and n.replace("conv_pw", "conv_pwl") in m.graph)
    keep = {pw: np.arange(m.graph[pw].c_out) % 3 != 0}
    eff = plan.effective(keep)
    dw = pw.replace("conv_pw", "conv_dw")
    assert np.array_equal(eff.out_keep[dw], keep[pw])  # the depthwise conv follows its input channels
    assert plan.macs(eff) < plan.full_macs
    assert plan.full_macs == m.graph.total_macs


def test_residual_branch_keeps_stream_alive():
    m = chanaxis.load_model("resnet18", num_classes=10, image_size=32)
    plan = PruningPlan(m)
    c = m.graph["layer1.0.conv2"].c_out
    eff = plan.effective({"layer1.0.conv2": np.arange(c) >= 8})
    # the stream still carries channels 0..7 from the shortcut: consumers keep reading them
    assert eff.in_live["layer1.1.conv1"].all()
    assert not eff.out_keep["layer1.0.conv2"][:8].any()
    full = {n: np.ones(m.graph[n].c_out, bool) for n in plan.prunable}
    for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):  # every producer of the stream drops 0..7
        full[n] = np.arange(m.graph[n].c_out) >= 8
    eff = plan.effective(full)
    assert not eff.in_live["layer2.0.conv1"][:8].any() and not eff.in_live["layer2.0.downsample.0"][:8].any()


def test_one_trace_feeds_graph_and_pruning(monkeypatch):
    """Loading a model and planning its pruning trace it once: the plan reads the flow walked with the graph."""
    import chanaxis.torch_graph as tg
    from chanaxis.interventions.masks import dataflow
    from chanaxis.model import LayerGraph

    real, calls = tg.trace, []
    monkeypatch.setattr(tg, "trace", lambda module: calls.append(module) or real(module))
    torch.manual_seed(0)
    m = chanaxis.load_model("test_efficientnet", num_classes=10, image_size=32)  # squeeze-excite gates, BN
    plan, again = PruningPlan(m), PruningPlan(m)
    assert len(calls) == 1
    assert plan.flow is m.graph.flow and plan.flow.traced
    assert set(plan.flow.info) == set(m.graph.names) | set(m.graph.other_macs)  # the classifier included
    keep = random_keep(plan, 0.5, seed=3)
    assert plan.macs(plan.effective(keep)) == again.macs(again.effective(keep)) < plan.full_macs
    rewalk = tg.build_graph(m.module, m.input_size, exclude_prefixes=m.exclude_prefixes).flow
    assert rewalk == plan.flow and len(calls) == 2
    g = m.graph  # a graph not read from a torch module (ONNX) has no flow: the graph-only accounting
    bare = dataflow(type("M", (), {"graph": LayerGraph(g.layers, {n: g.filters(n) for n in g.names}, g.other_macs)}))
    assert not bare.traced and bare.order == g.names


def test_flow_passes_only_an_analysed_layers_own_bn():
    """A silenced channel stays zero behind the BN where its layer's mask sits; any other BN is opaque."""
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 8, 3), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    m = chanaxis.load_model(net, image_size=16)  # conv "0" has < 4 outputs: counted, not analysed
    assert m.graph.names == ["3"]
    assert m.graph.flow.sources == {"0": {"<input>"}, "3": {"<opaque>"}, "8": {"3"}}


class _Chain(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))


def _sliced(net: nn.Sequential, k1, k3, k4) -> nn.Sequential:
    """A physically smaller copy: pruned filters and the consumers' input slices removed by hand."""
    def conv(src, i, o, groups=1):
        c = nn.Conv2d(len(i) if groups == 1 else len(o), len(o), src.kernel_size, src.stride, src.padding,
                      groups=len(o) if groups != 1 else 1)
        w = src.weight.data[o]
        c.weight.data = (w[:, i] if groups == 1 else w).clone()
        c.bias.data = src.bias.data[o].clone()
        return c

    def bn(src, o):
        b = nn.BatchNorm2d(len(o))
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(b, k).data = getattr(src, k).data[o].clone()
        return b.eval()
    a = np.arange
    fc = nn.Linear(len(k4), 5)
    fc.weight.data, fc.bias.data = net[14].weight.data[:, k4].clone(), net[14].bias.data.clone()
    return nn.Sequential(conv(net[0], a(3), k1), bn(net[1], k1), nn.ReLU(), conv(net[3], k1, k1, groups=8),
                         bn(net[4], k1), nn.ReLU(), conv(net[6], k1, k3), bn(net[7], k3), nn.ReLU(),
                         conv(net[9], k3, k4), bn(net[10], k4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         fc).eval()


def test_analytic_macs_equal_flop_counter_on_sliced_copy():
    torch.manual_seed(0)
    net = _Chain().eval()
    _randomise_bn(net, 7)
    model = chanaxis.load_model(net, image_size=16)
    plan = PruningPlan(model)
    assert plan.prunable == ["0", "6", "9"] and plan.followers == ["3"]
    assert plan.full_macs == model.graph.total_macs
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, 16, 16)
    for trial in range(3):
        keep = {n: rng.random(model.graph[n].c_out) > 0.4 for n in plan.prunable}
        for k in keep.values():
            k[rng.integers(len(k))] = True
        eff = plan.effective(keep)
        small = _sliced(net, *(np.flatnonzero(keep[n]) for n in ("0", "6", "9")))
        with FlopCounterMode(display=False) as fc:
            small(torch.zeros(1, 3, 16, 16))
        assert abs(plan.macs(eff) - fc.get_total_flops() / 2) <= 0.01 * plan.macs(eff)
        got, _ = model.run(x, masks=plan.masks(eff))  # masking = removal, not just in MACs
        with torch.no_grad():
            assert torch.allclose(got, small(x), atol=1e-5)


def test_auc_and_bootstrap_hand_example():
    a = ([0.2, 0.5, 0.8], [90.0, 80.0, 50.0])
    b = ([0.9, 0.3, 0.6], [40.0, 85.0, 75.0])  # unsorted on purpose
    aucs, (lo, hi) = curves.auc({"a": a, "b": b})
    assert (lo, hi) == (0.3, 0.8)
    a_at_03 = 90 - 10 / 3  # linear between (0.2, 90) and (0.5, 80)
    want_a = ((a_at_03 + 80) / 2 * 0.2 + (80 + 50) / 2 * 0.3) / 0.5
    b_at_08 = 75 - 35 * 2 / 3
    want_b = ((85 + 75) / 2 * 0.3 + (75 + b_at_08) / 2 * 0.2) / 0.5
    assert aucs["a"] == pytest.approx(want_a) and aucs["b"] == pytest.approx(want_b)
    d = np.array([1.0, 2.0, 4.0])
    mean, ci_lo, ci_hi = curves.bootstrap_ci(d, n_resamples=10_000, seed=0)
    # the exact bootstrap distribution: all 27 equally likely resamples of 3 seeds
    exact = np.sort([np.mean(c) for c in itertools.product(d, repeat=3)])
    assert mean == pytest.approx(7 / 3)
    assert ci_lo == np.quantile(exact, 0.025, method="inverted_cdf")  # percentile of a discrete law
    assert ci_hi == np.quantile(exact, 0.975, method="inverted_cdf")
    assert curves.bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)


class _Toy(nn.Module):
    """ch0 = red (the class signal), ch1 = green, ch2 = an exact copy of ch1, ch3 = blue (unused downstream)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool, self.flat = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = self.conv.weight[1, 1] = self.conv.weight[2, 1] = self.conv.weight[3, 2] = 1
            self.fc.weight.copy_(torch.tensor([[-1.0, -0.5, -0.5, 0.0], [1.0, 0.5, 0.5, 0.0]]))
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.bn(self.conv(x)))))


def test_known_damage_toy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    s = (2 * y - 1).float()[:, None, None, None]
    x = torch.randn(400, 3, 4, 4, generator=g) * 2.0
    x[:, :2] += s  # red and green carry the class, each with its own noise
    model = chanaxis.load_model(_Toy(), image_size=4)
    assert model.graph.names == ["conv"]
    with torch.no_grad():
        Y = model.module.conv(x).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    mom = Moments.from_samples(Y, np.zeros(len(Y)))
    base = evaluate(model_forward(model), tensor_batches(x, y, 64))
    res, mode = layer_damages(model, "conv", x, y, [0, 2, 3], base, mom,
                              {"hull": [[1], [1], [0]], "mean": [[], [], []]}, batch_size=64)
    assert mode == "suffix"
    dmg = res["damage_loss"]
    assert dmg[0] > 0.1 and res["damage_acc"][0] > 1  # the strongest signal channel: removal hurts
    assert dmg[2] == pytest.approx(0.0, abs=1e-7)  # nothing downstream reads ch3
    assert dmg[1] > 0.02  # the copy: removal alone hurts ...
    assert abs(res["hull"][1]) < 0.01 * dmg[1]  # ... but its twin rebuilds it
    assert res["mean"][1] > 0.5 * dmg[1]  # the mean-ablation control does not


# ------------------------------------------------------------------------------------------- end to end on a store
@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    from chanaxis.stages.metrics import metrics
    out = tmp_path_factory.mktemp("ix") / "run.zarr"
    m = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
    chanaxis.capture(m, "synthetic", out, n_calibration=64, chunk_images=64, progress=False)
    bare = tmp_path_factory.mktemp("ix") / "bare.zarr"
    chanaxis.capture(m, "synthetic", bare, n_calibration=32, chunk_images=32, progress=False)
    metrics(out, only=("local", "target"), progress=False)
    return out, bare, m


def test_lesion_store_and_resume(run_store, monkeypatch):
    run, _, model = run_store
    L = importlib.import_module("chanaxis.interventions.lesion")  # the module, not the re-exported function
    calls = {"n": 0, "die": True}
    real = L.layer_damages

    def counting(*a, **k):
        calls["n"] += 1
        if calls["die"] and calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(L, "layer_damages", counting)
    with pytest.raises(KeyboardInterrupt):
        lesion(run, fraction=0.03, eval_images=8, batch_size=16, progress=False, model=model)
    assert chanaxis.store.status(run)["lesion"] == "running"
    calls["die"] = False
    lesion(run, fraction=0.03, eval_images=8, batch_size=16, progress=False, model=model)
    tree = chanaxis.open_run(run)
    ds = tree["lesion"].to_dataset().compute()
    assert tree.attrs["status"]["lesion"] == "done" and ds.attrs["suffix_runs"]
    m = tree["metrics"].to_dataset()
    assert calls["n"] == 4 + len(set(m.layer.values)) - 3  # the three finished layers were not redone
    assert ds.sizes["unit"] == sum(max(1, round(0.03 * (m.layer == n).sum().item())) for n in set(m.layer.values))
    assert np.array_equal(m["channel"].values[ds["metrics_unit"].values], ds["channel"].values)
    for k in ("damage_loss", "damage_acc", "replaced_damage", "mean_ablation_damage", "random_peer_damage"):
        assert np.isfinite(ds[k].values).all() and ds[k].attrs["units"] in ("nats", "%")
    # the resumed store equals a clean run of the same units
    from chanaxis.reload import model_from_store
    assert model_from_store(run).weights_sha256() == model.weights_sha256()
    x, y, _ = chanaxis.interventions.common.load_eval_images(run, 8)
    base = evaluate(model_forward(model), tensor_batches(x, y, 16))
    for name in (str(ds.layer.values[0]), str(ds.layer.values[-1])):  # done before and after the interruption
        sel = ds.layer.values == name
        redo, _ = layer_damages(model, name, x, y, ds.channel.values[sel], base)
        assert np.allclose(redo["damage_loss"], ds["damage_loss"].values[sel], atol=1e-6)
    p = tree["lesion/predictors"].to_dataset()
    assert {"spearman", "within_bin", "within_bin_pooled", "delta_r2"} <= set(p.data_vars)
    assert "hull_score" in p.metric.values and "pooled" in p.r2_scope.values


def test_prune_store_oneshot(run_store):
    run, _, model = run_store
    prune(run, methods=["input_capture", "task_info", "magnitude", "random", "taylor"], levels=[0.1, 0.5, 0.9],
          seeds=[42, 123], finetune_epochs=0, model=model, eval_images=16, batch_size=16, taylor_images=16,
          progress=False, n_resamples=500)
    ds = chanaxis.open_run(run)["pruning"].to_dataset().compute()
    assert ds["acc_oneshot"].shape == (5, 3, 2) and np.isnan(ds["acc_finetuned"].values).all()
    assert (ds["macs_retained"].values < ds.attrs["full_macs"]).all()
    assert (ds["macs_retained"].sel(level=0.9) <= ds["macs_retained"].sel(level=0.5)).all()
    lo, hi = ds["auc_interval"].sel(regime="oneshot").values
    assert 0 < lo < hi < 1
    one = ds.sel({"method": "magnitude", "seed": 42})
    assert float(one["auc"].sel(regime="oneshot")) == pytest.approx(
        curves.mean_over(one["macs_reduction"].values, one["acc_oneshot"].values, lo, hi))
    # seed-free scores share their one-shot cells; random ones differ by seed
    mag, rnd = ds.sel({"method": "magnitude"}), ds.sel({"method": "random"})
    assert np.array_equal(mag["acc_oneshot"].sel(seed=42), mag["acc_oneshot"].sel(seed=123))
    assert not np.array_equal(rnd["macs_retained"].sel(seed=42), rnd["macs_retained"].sel(seed=123))
    assert np.isfinite(ds["auc"].sel(regime="oneshot").values).all()
    assert ds["auc"].attrs["units"] == "%" and ds["macs_retained"].attrs["units"] == "MACs"
    assert np.isfinite(ds["taylor"].values).all() and (ds["taylor"].values >= 0).all()
    c = ds.sel(regime="oneshot", contrast="best_local-magnitude")
    assert c["contrast_diff"].values.mean() == pytest.approx(float(c["contrast_mean"]))
    assert float(c["contrast_ci_low"]) <= float(c["contrast_mean"]) <= float(c["contrast_ci_high"])


def test_finetune_keeps_pruned_channels_removed(run_store):
    from chanaxis.interventions.finetune import finetune
    from chanaxis.reload import dataset_from_store
    run, _, model = run_store
    plan = PruningPlan(model)
    eff = plan.effective(random_keep(plan, 0.5, seed=3))
    from chanaxis.data.loader import Loader
    train = Loader(dataset_from_store(run, transform="train").dataset, workers=0)
    net = finetune(model, eff, train, epochs=1, max_batches=2, lr=1e-2, seed=0, batch_size=8)
    tuned = copy.deepcopy(model)
    tuned.module = net
    tuned._modules = dict(net.named_modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
    masked, _ = tuned.run(x, masks=plan.masks(eff))
    assert torch.allclose(plain, masked, atol=1e-5)  # the trained copy is still exactly the masked network
    before, _ = model.run(x, masks=plan.masks(eff))
    assert not torch.allclose(plain, before, atol=1e-4)  # and it did train
    prune(run, methods=["magnitude"], levels=[0.5], seeds=[42], finetune_epochs=1, finetune_batches=1, model=model,
          eval_images=16, batch_size=8, progress=False, n_resamples=100, overwrite=True)
    ds = chanaxis.open_run(run)["pruning"].to_dataset().compute()
    assert np.isfinite(ds["acc_finetuned"].values).all() and ds["acc_finetuned"].attrs["units"] == "%"


class _NoGrad:
    """A model that declares no gradients (as the ONNX adapter does)."""

    def __init__(self, inner):
        self._inner = inner
        self.capabilities = frozenset()

    def __getattr__(self, k):
        return getattr(self._inner, k)


def test_bad_input(run_store, capsys):
    run, bare, model = run_store
    with pytest.raises(ChanaxisError, match="methods .* must be one of input_capture, .*not 'sparsity'"):
        prune(run, methods=["sparsity"])
    with pytest.raises(ChanaxisError, match="allocation .* must be one of global, uniform, taylor_hybrid"):
        prune(run, allocation="best")
    with pytest.raises(ChanaxisError, match="levels .* must be < 1"):
        prune(run, levels=[0.5, 1.0])
    with pytest.raises(ChanaxisError, match="chanaxis metrics"):
        prune(bare)
    with pytest.raises(ChanaxisError, match="chanaxis metrics"):
        lesion(bare)
    from chanaxis.cli.main import main
    assert main(["prune", str(bare)]) == 2
    assert "chanaxis metrics" in capsys.readouterr().err
    nograd = _NoGrad(model)
    with pytest.raises(CapabilityError, match="taylor"):
        prune(run, model=nograd, methods=["taylor"], finetune_epochs=0, overwrite=True)
    with pytest.raises(CapabilityError, match="fine-tuning"):
        prune(run, model=nograd, methods=["magnitude"], finetune_epochs=1, overwrite=True)
    # one-shot needs no gradients
    prune(run, model=nograd, methods=["magnitude", "input_capture"], levels=[0.5], seeds=[42], finetune_epochs=0,
          eval_images=32, progress=False, overwrite=True, n_resamples=100)
    assert chanaxis.store.status(run)["pruning"] == "done"


# ------------------------------------------------------------------------------------------- the stage contract
def _fresh_copy(run, dst):
    """A copy of the store without /lesion and /pruning, so both stages really run in it."""
    import shutil
    shutil.copytree(run, dst)
    grp = chanaxis.store.open_group(dst, mode="r+")
    for node in (chanaxis.store.LESION, chanaxis.store.PRUNING):
        if node in grp:
            del grp[node]
    return dst


def test_units_in_any_order_give_the_same_store(run_store, tmp_path):
    """A unit depends only on the store and its key: reversed, seed 123's cells run before seed 42's (whose one-shot
    values seed-free methods otherwise copy) and the last layers first, with identical results."""
    from chanaxis.interventions.lesion import LesionStage
    from chanaxis.interventions.prune import PruneStage
    from chanaxis.stage import Context, run_stage
    run, _, model = run_store
    stages = [(LesionStage(fraction=0.03, eval_images=8, batch_size=16), "lesion"),
              (PruneStage(methods=("magnitude", "random"), levels=(0.3, 0.6), seeds=(42, 123), finetune_epochs=1,
                          finetune_batches=1, eval_images=8, batch_size=8, n_resamples=100), "pruning")]
    for stage, node in stages:
        got = []
        for i, order in enumerate((None, lambda units: units[::-1])):
            dst = _fresh_copy(run, tmp_path / f"{node}{i}.zarr")
            run_stage(stage, dst, Context(model=model, progress=False), order=order)
            got.append(chanaxis.open_run(dst)[node].to_dataset().compute())
        assert got[0].identical(got[1]), node
    assert got[0]["finetune_done"].values.all() and np.isfinite(got[0]["loss_finetuned"].values).all()


def test_peer_replacement_uses_the_runs_ridge_lambda(run_store, tmp_path):
    from chanaxis.interventions.lesion import ridge_lambda
    run, _, _ = run_store
    grp = chanaxis.store.open_group(_fresh_copy(run, tmp_path / "lam.zarr"), mode="r+")
    assert ridge_lambda(grp) == 1e-3
    grp["metrics"].attrs["parameters"] = {**grp["metrics"].attrs["parameters"], "lam": 0.25}
    assert ridge_lambda(grp) == 0.25


def test_unknown_parameter_names_the_nearest(run_store):
    run, _, _ = run_store
    with pytest.raises(ChanaxisError, match="unknown lesion parameter 'fractoin'; did you mean 'fraction'"):
        chanaxis.lesion(run, fractoin=0.1)
    with pytest.raises(ChanaxisError, match="fraction .* must be ≤ 1"):
        lesion(run, fraction=1.5)


def test_api_signature_and_help_show_the_parameters():
    import inspect
    import pydoc
    from chanaxis.interventions.prune import LEVELS
    sig = inspect.signature(chanaxis.prune)
    assert sig.parameters["levels"].default == LEVELS
    assert sig.parameters["levels"].kind is inspect.Parameter.KEYWORD_ONLY
    text = pydoc.render_doc(chanaxis.prune, renderer=pydoc.plaintext)  # what help(chanaxis.prune) shows
    assert "levels = (0.1, 0.2" in text and "channel sparsities" in text
    assert {"all_channels", "fraction", "eval_images", "replace"} <= set(inspect.signature(chanaxis.lesion).parameters)


def test_cli_options_come_from_the_parameters(run_store, capsys):
    from chanaxis.cli.main import build_parser, main
    from chanaxis.cli.options import given
    from chanaxis.interventions.lesion import LesionParams
    a = build_parser().parse_args(["lesion", "r.zarr", "--all", "--no-replace", "--eval-images", "none"])
    assert given(a, LesionParams) == {"all_channels": True, "replace": False, "eval_images": None}
    run, _, _ = run_store
    # one level: every method sits at its own MACs reduction, so no interval is common to all of them
    assert main(["prune", str(run), "--methods", "magnitude", "input_capture", "--levels", "0.5", "--seeds", "42",
                 "--finetune-epochs", "0", "--eval-images", "16", "--n-resamples", "100", "--overwrite",
                 "--quiet"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "share no common MACs-reduction interval" in printed and "more or higher --levels" in printed
