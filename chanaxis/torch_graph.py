"""Build a LayerGraph from a torch.nn.Module by symbolic tracing (torch.fx) and one probe forward."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .errors import ChanaxisError
from networkx.utils import UnionFind

from .model import Layer, LayerGraph, assign_coupling_groups, macs

BN_TYPES: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)
LN_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm)
_SHAPE_ONLY = {"permute", "contiguous", "reshape", "view", "transpose", "clone"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}

try:  # timm's own norm+act modules and its list of modules/functions fx must not trace into
    from timm.layers import LayerNorm2d as _TimmLN2d
    from timm.layers.norm_act import BatchNormAct2d as _TimmBNAct
    from timm.models import _features_fx as _timm_fx

    BN_TYPES = BN_TYPES + (_TimmBNAct,)
    LN_TYPES = LN_TYPES + (_TimmLN2d,)
except ImportError:  # timm is a dependency, but the graph builder does not need it
    _timm_fx = None


class _Tracer(fx.Tracer):
    def __init__(self):
        fns = tuple(_timm_fx.get_notrace_functions()) if _timm_fx else ()
        super().__init__(autowrap_functions=fns)
        self._leaves = tuple(_timm_fx.get_notrace_modules()) if _timm_fx else ()

    def is_leaf_module(self, m, qualname):
        if isinstance(m, self._leaves + BN_TYPES + LN_TYPES):
            return True
        return super().is_leaf_module(m, qualname)


def trace(module: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure means we cannot read the graph
        raise ChanaxisError(
            f"cannot trace {type(module).__name__} with torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "chanaxis needs a traceable model to find layers, consumers and residual couplings") from None


def _probe_shapes(module: nn.Module, input_size, device) -> dict[str, tuple[tuple, tuple]]:
    shapes: dict[str, tuple[tuple, tuple]] = {}
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: shapes.__setitem__(name, (tuple(inp[0].shape), tuple(out.shape)))))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return shapes


def _module_macs(m: nn.Module, in_shape, out_shape) -> int:
    if isinstance(m, nn.Conv2d):
        return macs(m.kernel_size, m.in_channels // m.groups, m.out_channels, out_shape[2] * out_shape[3])
    # Linear: one MAC per input feature per output element, over all leading positions
    positions = int(np.prod(out_shape[:-1])) // out_shape[0] if len(out_shape) > 1 else 1
    return macs((1, 1), m.in_features, m.out_features, positions)


def build_graph(module: nn.Module, input_size: tuple[int, int, int], min_channels: int = 4,
                exclude_prefixes: tuple[str, ...] = (), device="cpu") -> LayerGraph:
    """Analysed layers per METHOD §1: Conv2d with ≥ `min_channels` outputs (grouped and depthwise included)
    and channels-last Linear layers that feed another channels-last Linear (MLP hidden units, ConvNeXt).
    Modules under `exclude_prefixes` (the classifier head) are counted in MACs but never analysed."""
    graph = trace(module)
    modules = dict(module.named_modules())
    shapes = _probe_shapes(module, input_size, device)

    def excluded(name):
        return any(name == p or name.startswith(p + ".") for p in exclude_prefixes)

    src: dict[fx.Node, frozenset[str]] = {}
    consumers: dict[str, list[str]] = {}
    own_norm: dict[str, tuple[str, str]] = {}
    first_user_chain: dict[fx.Node, str] = {}  # node -> producer whose raw output it still is (shape-only ops)
    uf = UnionFind()
    order: list[str] = []

    def sources_of(args) -> frozenset[str]:
        return union_sources(args, src)

    for node in graph.nodes:
        if node.op == "call_module":
            m = modules[node.target]
            ins = sources_of(node.args)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                for p in ins:
                    consumers.setdefault(p, [])
                    if node.target not in consumers[p]:
                        consumers[p].append(node.target)
                src[node] = frozenset([node.target])
                first_user_chain[node] = node.target
                order.append(node.target)
                continue
            if isinstance(m, BN_TYPES + LN_TYPES):
                arg = node.args[0]
                p = first_user_chain.get(arg) if isinstance(arg, fx.Node) else None
                if p is not None and len(arg.users) == 1 and p not in own_norm:
                    own_norm[p] = (node.target, "bn" if isinstance(m, BN_TYPES) else "ln")
            src[node] = ins
        elif node.op in ("call_function", "call_method"):
            ins = sources_of((node.args, node.kwargs))
            if node.target in _ADD_FUNCS or node.target in ("add", "add_"):
                producers = sorted(ins)
                for a, b in zip(producers, producers[1:]):
                    uf.union(a, b)
            if node.op == "call_method" and node.target in _SHAPE_ONLY:
                arg = node.args[0]
                if isinstance(arg, fx.Node) and arg in first_user_chain and len(arg.users) == 1:
                    first_user_chain[node] = first_user_chain[arg]
            if node.op == "call_function" and node.target in (torch.permute, torch.transpose):
                arg = node.args[0]
                if isinstance(arg, fx.Node) and arg in first_user_chain and len(arg.users) == 1:
                    first_user_chain[node] = first_user_chain[arg]
            src[node] = ins
        else:
            src[node] = frozenset()

    layers: list[Layer] = []
    filters: dict[str, np.ndarray] = {}
    other_macs: dict[str, int] = {}
    for name in order:
        m = modules[name]
        if name not in shapes:  # module traced but not executed (dead branch)
            continue
        in_shape, out_shape = shapes[name]
        n_macs = _module_macs(m, in_shape, out_shape)
        analysed = False
        if not excluded(name):
            if isinstance(m, nn.Conv2d) and m.out_channels >= min_channels:
                analysed = True
            elif isinstance(m, nn.Linear) and len(in_shape) == 4 and m.out_features >= min_channels:
                analysed = any(isinstance(modules.get(c), nn.Linear) and len(shapes.get(c, ((),))[0]) == 4
                               for c in consumers.get(name, []))
        if not analysed:
            other_macs[name] = n_macs
            continue
        if isinstance(m, nn.Conv2d):
            kind = "conv" if m.groups == 1 else ("dwconv" if m.groups == m.in_channels else "gconv")
            layer = Layer(name=name, kind=kind, c_in=m.in_channels, c_out=m.out_channels, groups=m.groups,
                          kernel=tuple(m.kernel_size), stride=tuple(m.stride), out_hw=tuple(out_shape[2:4]),
                          depth=0, layout="nchw")
            filters[name] = m.weight.detach().float().cpu().numpy().copy()
        else:
            layer = Layer(name=name, kind="linear", c_in=m.in_features, c_out=m.out_features, groups=1,
                          kernel=(1, 1), stride=(1, 1), out_hw=tuple(out_shape[1:3]), depth=0, layout="nhwc")
            filters[name] = m.weight.detach().float().cpu().numpy()[:, :, None, None].copy()
        assert layer.macs == n_macs, (name, layer.macs, n_macs)
        norm_name, norm_kind = own_norm.get(name, (None, "none"))
        layer.norm, layer.norm_module = norm_kind, norm_name
        # METHOD §6: silence after a per-channel BN; before a channel-mixing norm (LN) or where none follows
        layer.mask_at = norm_name if norm_kind == "bn" else name
        layer.consumers = list(consumers.get(name, []))
        layers.append(layer)
    for d, layer in enumerate(layers):
        layer.depth = d

    assign_coupling_groups(layers, lambda name: uf[name])
    if not layers:
        raise ChanaxisError("the model has no layer to analyse (no Conv2d with ≥ 4 output channels); "
                            "chanaxis analyses convolutional networks")
    return LayerGraph(layers, filters, other_macs)


def union_sources(args, src: dict) -> frozenset[str]:
    """The union of `src[node]` over the fx nodes among (nested) `args`: which producers' channels reach here."""
    out: set[str] = set()
    for a in flatten_args(args):
        if isinstance(a, fx.Node):
            out |= src.get(a, frozenset())
    return frozenset(out)


def flatten_args(obj):
    """The leaves of an fx node's (nested) args/kwargs."""
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from flatten_args(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from flatten_args(o)
    else:
        yield obj
