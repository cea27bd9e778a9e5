"""LayerGraph: analysed layers, MACs against torch's flop counter, consumers, coupling groups, masks."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import chanaxis
from chanaxis.errors import ChanaxisError

FAMILIES = ["resnet18", "vgg16_bn", "mobilenetv2_100", "convnext_tiny"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    torch.manual_seed(0)
    return chanaxis.load_model(request.param, num_classes=10, image_size=32)


def test_macs_match_flop_counter(family):
    with FlopCounterMode(display=False) as fc:
        family.module(torch.zeros(1, 3, 32, 32))
    assert fc.get_total_flops() == 2 * family.graph.total_macs  # torch counts 2 FLOPs per MAC


def test_analysed_layers_follow_method(family):
    g = family.graph
    convs = {n: m for n, m in family.module.named_modules() if isinstance(m, nn.Conv2d)}
    for layer in g.layers:
        assert layer.c_out >= 4
        assert layer.macs_per_channel * layer.c_out == layer.macs
        if layer.kind != "linear":
            conv = convs[layer.name]
            assert (layer.c_in, layer.c_out, layer.groups) == (conv.in_channels, conv.out_channels, conv.groups)
            assert g.filters(layer.name).shape == tuple(conv.weight.shape)
    # every Conv2d with ≥ 4 outputs outside the head is analysed
    expected = {n for n, m in convs.items() if m.out_channels >= 4 and not n.startswith(("head", "pre_logits"))}
    assert expected <= set(g.names)
    assert [l.depth for l in g.layers] == list(range(len(g)))


def test_family_specifics(family):
    g = family.graph
    name = family.spec["name"]
    if name == "resnet18":
        assert family.spec["adaptations"] == ["resnet_3x3_stem_no_maxpool"]
        assert g["conv1"].kernel == (3, 3) and g["conv1"].out_hw == (32, 32)
        # residual stream: the stage's second convs and the downsample conv share coupling groups
        assert np.array_equal(g["layer2.0.conv2"].group, g["layer2.0.downsample.0"].group)
        assert np.array_equal(g["layer2.0.conv2"].group, g["layer2.1.conv2"].group)
        assert len(set(g["layer2.0.conv1"].group) & set(g["layer2.0.conv2"].group)) == 0
        assert g["layer1.0.conv1"].consumers == ["layer1.0.conv2"]
        assert all(l.norm == "bn" for l in g.layers)
    if name == "mobilenetv2_100":
        dws = [l for l in g.layers if l.kind == "dwconv"]
        assert dws and all(l.groups == l.c_in == l.c_out for l in dws)
        assert g["conv_stem"].stride == (1, 1)
    if name == "convnext_tiny":
        fc1 = [l for l in g.layers if l.kind == "linear"]
        assert len(fc1) == 18 and all(l.name.endswith("mlp.fc1") and l.layout == "nhwc" for l in fc1)
        assert all(l.c_out == 4 * l.c_in for l in fc1)
        assert all(l.mask_at == l.name for l in g.layers)  # LayerNorm mixes channels: silence the output itself
        assert g["stages.0.blocks.0.conv_dw"].norm == "ln"
    if name == "vgg16_bn":
        assert family.spec["adaptations"] == ["cifar_vgg_head"]
        assert len(g) == 13


def test_mask_equals_zeroed_weights(family):
    """A lesion through the runner equals editing a copy's weights (post-BN zero, METHOD §6)."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    g = family.graph
    for layer in (g.layers[1], g.layers[len(g) // 2], g.layers[-1]):
        drop = [0, layer.c_out // 2]
        mask = torch.ones(layer.c_out)
        mask[drop] = 0
        got, _ = family.run(x, masks={layer.name: mask})
        ref = copy.deepcopy(family.module).eval()
        mods = dict(ref.named_modules())
        with torch.no_grad():
            if layer.norm == "bn":
                mods[layer.norm_module].weight[drop] = 0
                mods[layer.norm_module].bias[drop] = 0
            else:
                mods[layer.name].weight[drop] = 0
                if mods[layer.name].bias is not None:
                    mods[layer.name].bias[drop] = 0
            want = ref(x)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), layer.name


def test_batched_masks_equal_separate_runs(tiny_resnet):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    layer = tiny_resnet.graph.layers[4]
    masks = torch.ones(3, layer.c_out)
    masks[0, 0] = 0
    masks[1, 1:5] = 0
    batched, _ = tiny_resnet.run(x, masks={layer.name: masks})
    assert batched.shape == (3, 2, 10)
    for k in range(3):
        single, _ = tiny_resnet.run(x, masks={layer.name: masks[k]})
        assert torch.allclose(batched[k], single, atol=1e-6)


def test_capture_sees_pre_norm_output(tiny_resnet):
    x = torch.randn(2, 3, 32, 32)
    layer = tiny_resnet.graph.layers[2]
    conv = dict(tiny_resnet.module.named_modules())[layer.name]
    seen = {}
    h = conv.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach().clone()))
    _, caps = tiny_resnet.run(x, capture=[layer.name])
    h.remove()
    assert torch.equal(caps[layer.name], seen["y"])


def test_torch_module_adapter():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    m = chanaxis.load_model(net, image_size=16)
    assert m.graph.names == ["0", "3"] and m.num_classes == 5
    assert m.graph["0"].norm == "bn" and m.graph["3"].norm == "none"
    assert m.graph["3"].out_hw == (14, 14)
    assert m.graph.total_macs == 16 * 16 * 8 * 27 + 14 * 14 * 6 * 72 + 30


def test_unknown_model_suggests_nearest():
    with pytest.raises(ChanaxisError, match="resnet18"):
        chanaxis.load_model("resnt18")


def test_checkpoint_roundtrip_and_mismatch(tmp_path, tiny_resnet):
    path = tmp_path / "w.pt"
    torch.save(tiny_resnet.module.state_dict(), path)
    m = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, checkpoint=str(path))
    assert m.weights_sha256() == tiny_resnet.weights_sha256()
    with pytest.raises(ChanaxisError, match="does not fit"):
        chanaxis.load_model("test_resnet", num_classes=7, image_size=32, checkpoint=str(path))
    from safetensors.torch import save_file
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_resnet.module.state_dict().items()}, str(st))
    m2 = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, checkpoint=str(st))
    assert m2.weights_sha256() == tiny_resnet.weights_sha256()
    with pytest.raises(ChanaxisError, match="does not fit"):
        chanaxis.load_model("test_convnext", num_classes=10, image_size=32, checkpoint=str(path))
