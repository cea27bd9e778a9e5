"""Build a LayerGraph from a torch.nn.Module by one symbolic trace (torch.fx), one shape-propagating forward and
one walk over the traced graph."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from networkx.utils import UnionFind
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ChanaxisError
from .model import INPUT, OPAQUE, Dataflow, Layer, LayerGraph, ModuleInfo, assign_coupling_groups, macs

BN_TYPES: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)
LN_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm)
_SHAPE_ONLY = {"permute", "contiguous", "reshape", "view", "transpose", "clone"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_CAT = {torch.cat, torch.concat, torch.stack, "cat"}

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


def _module_macs(m: nn.Module, in_shape, out_shape) -> int:
    if isinstance(m, nn.Conv2d):
        return macs(m.kernel_size, m.in_channels // m.groups, m.out_channels, out_shape[2] * out_shape[3])
    # Linear: one MAC per input feature per output element, over all leading positions
    positions = int(np.prod(out_shape[:-1])) // out_shape[0] if len(out_shape) > 1 else 1
    return macs((1, 1), m.in_features, m.out_features, positions)


@dataclass
class FxWalk:
    """What one pass over a module's traced graph finds, for the LayerGraph and for pruning."""

    modules: dict[str, nn.Module]
    order: list[str]  # conv/linear modules in execution order
    shapes: dict[str, tuple[tuple, tuple]]  # conv/linear module -> (input shape, output shape), batch of 1
    info: dict[str, ModuleInfo]  # conv/linear module -> channels, groups, MACs
    consumers: dict[str, list[str]]  # producer -> conv/linear modules that read its channels (any path)
    coupling: UnionFind  # producers whose outputs a residual add sums
    own_norm: dict[str, tuple[str, str]]  # producer -> (norm module, bn | ln) fed only by its raw output
    reads: dict[str, frozenset[str]]  # conv/linear module -> producers of its channels under the pruning rules


def walk(module: nn.Module, input_size: tuple[int, int, int], device="cpu") -> FxWalk:
    """Trace `module` once, propagate shapes with one forward of a zero image, and walk the fx graph once.

    Two channel propagations run side by side. `src` (for consumers and residual coupling): every producer whose
    channels reach a node by any path. `flow` (for pruning, METHOD §7): which producers' *silenced* channels stay
    zero at a node — a cat, a get_attr or a norm other than its producer's own BN is opaque, and a broadcast
    multiply (squeeze-excite gate) passes only its full-shape operand."""
    gm = fx.GraphModule(module, trace(module))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((1, *input_size), device=device))
    except Exception as e:  # noqa: BLE001 - the traced graph must run for shapes and MACs
        cause = e.__cause__ if isinstance(e.__cause__, RuntimeError) else None
        if cause is not None:  # the network itself failed (e.g. too small an image): the caller knows what to say
            raise cause from None
        raise ChanaxisError(f"cannot run the fx-traced {type(module).__name__} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    finally:
        module.train(was_training)
    modules = dict(module.named_modules())
    w = FxWalk(modules, [], {}, {}, {}, UnionFind(), {}, {})
    src: dict[fx.Node, frozenset[str]] = {}
    flow: dict[fx.Node, frozenset[str]] = {}
    first_user_chain: dict[fx.Node, str] = {}  # node -> producer whose raw output it still is (shape-only ops)

    def shape(n):
        meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            src[node], flow[node] = frozenset(), frozenset([INPUT])
        elif node.op == "get_attr":
            src[node], flow[node] = frozenset(), frozenset([OPAQUE])
        elif node.op == "call_module":
            m = modules[node.target]
            ins, flow_ins = union_sources(node.args, src), union_sources(node.args, flow)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                name = node.target
                for p in ins:
                    w.consumers.setdefault(p, [])
                    if name not in w.consumers[p]:
                        w.consumers[p].append(name)
                w.order.append(name)
                w.shapes[name] = (shape(node.args[0]), shape(node))
                c_in, c_out, groups = ((m.in_channels, m.out_channels, m.groups) if isinstance(m, nn.Conv2d)
                                       else (m.in_features, m.out_features, 1))
                w.info[name] = ModuleInfo(name, c_in, c_out, groups, _module_macs(m, *w.shapes[name]))
                w.reads[name] = flow_ins
                first_user_chain[node] = name
                src[node] = flow[node] = frozenset([name])
                continue
            src[node], flow[node] = ins, flow_ins
            if isinstance(m, BN_TYPES + LN_TYPES):
                arg, kind = node.args[0], "bn" if isinstance(m, BN_TYPES) else "ln"
                p = first_user_chain.get(arg) if isinstance(arg, fx.Node) else None
                own = p is not None and len(arg.users) == 1 and p not in w.own_norm
                if own:
                    w.own_norm[p] = (node.target, kind)
                if not (own and kind == "bn"):
                    # a zero channel leaves a norm as β (BN) or mixed (LN); a producer's own BN carries its mask
                    flow[node] = frozenset([OPAQUE])
        elif node.op in ("call_function", "call_method"):
            src[node] = ins = union_sources((node.args, node.kwargs), src)
            if node.target in _ADD_FUNCS or node.target in ("add", "add_"):
                producers = sorted(ins)
                for a, b in zip(producers, producers[1:]):
                    w.coupling.union(a, b)
            if (node.op == "call_method" and node.target in _SHAPE_ONLY) or \
                    (node.op == "call_function" and node.target in (torch.permute, torch.transpose)):
                arg = node.args[0]
                if isinstance(arg, fx.Node) and arg in first_user_chain and len(arg.users) == 1:
                    first_user_chain[node] = first_user_chain[arg]
            if node.target in _CAT:
                flow[node] = frozenset([OPAQUE])
            elif node.target in _MUL:
                full = [a for a in node.args if isinstance(a, fx.Node) and shape(a) == shape(node)]
                # a broadcast gate (squeeze-excite) scales channels but never brings a silenced one back
                flow[node] = union_sources(full or node.args, flow)
            else:
                flow[node] = union_sources((node.args, node.kwargs), flow)
        else:
            src[node] = flow[node] = frozenset()
    return w


def filters_of(m: nn.Module) -> np.ndarray:
    """A conv's filters as (c_out, c_in/groups, kh, kw) float32; a linear layer's as (c_out, c_in, 1, 1)."""
    w = m.weight.detach().float().cpu().numpy()
    return (w if isinstance(m, nn.Conv2d) else w[:, :, None, None]).copy()


def build_graph(module: nn.Module, input_size: tuple[int, int, int], min_channels: int = 4,
                exclude_prefixes: tuple[str, ...] = (), device="cpu") -> LayerGraph:
    """Analysed layers per METHOD §1: Conv2d with ≥ `min_channels` outputs (grouped and depthwise included)
    and channels-last Linear layers that feed another channels-last Linear (MLP hidden units, ConvNeXt).
    Modules under `exclude_prefixes` (the classifier head) are counted in MACs but never analysed.
    The graph's `flow` holds every conv/linear module's channel sources for pruning, from the same walk."""
    w = walk(module, input_size, device)
    modules, shapes, consumers = w.modules, w.shapes, w.consumers

    def excluded(name):
        return any(name == p or name.startswith(p + ".") for p in exclude_prefixes)

    layers: list[Layer] = []
    filters: dict[str, np.ndarray] = {}
    other_macs: dict[str, int] = {}
    for name in w.order:
        m = modules[name]
        in_shape, out_shape = shapes[name]
        n_macs = w.info[name].macs
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
            filters[name] = filters_of(m)
        else:
            layer = Layer(name=name, kind="linear", c_in=m.in_features, c_out=m.out_features, groups=1,
                          kernel=(1, 1), stride=(1, 1), out_hw=tuple(out_shape[1:3]), depth=0, layout="nhwc")
            filters[name] = filters_of(m)
        assert layer.macs == n_macs, (name, layer.macs, n_macs)
        norm_name, norm_kind = w.own_norm.get(name, (None, "none"))
        layer.norm, layer.norm_module = norm_kind, norm_name
        # METHOD §6: silence after a per-channel BN; before a channel-mixing norm (LN) or where none follows
        layer.mask_at = norm_name if norm_kind == "bn" else name
        layer.consumers = list(consumers.get(name, []))
        layers.append(layer)
    for d, layer in enumerate(layers):
        layer.depth = d

    assign_coupling_groups(layers, lambda name: w.coupling[name])
    if not layers:
        raise ChanaxisError("the model has no layer to analyse (no Conv2d with ≥ 4 output channels); "
                            "chanaxis analyses convolutional networks")
    # Only an analysed layer's mask sits after its own BN; behind any other module's BN a zero channel comes out
    # as β, so that BN is opaque like every norm. Such a module's raw output feeds nothing but that BN.
    masked = {l.name for l in layers}
    opaque = {p for p, (_, kind) in w.own_norm.items() if kind == "bn" and p not in masked}
    sources = {n: frozenset(OPAQUE if s in opaque else s for s in r) for n, r in w.reads.items()}
    return LayerGraph(layers, filters, other_macs, flow=Dataflow(list(w.order), w.info, sources, traced=True))


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
