"""Read an ONNX graph into a chanaxis LayerGraph, mirroring chanaxis/torch_graph.py on the exported network.

Channels are followed from the input through an explicit set of ops; a layer's sources propagate through every
supported op (union of its inputs), residual `Add`/`Sum` tie the producers they merge, and the first normalisation
reached through shape-only ops is the layer's own. Names come from what the exporters keep of the torch module names
(dynamo: the `namespace` metadata; legacy: the `/a/a.0/conv1/Conv` node scope; both: `<module>.weight` initializers).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from chanaxis.errors import ChanaxisError
from networkx.utils import UnionFind

from chanaxis.model import Layer, LayerGraph, assign_coupling_groups, macs

PRODUCERS = {"Conv", "MatMul", "Gemm"}
_SHAPE_ONLY = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"}
_BN = {"BatchNormalization"}
_LN = {"LayerNormalization", "GroupNormalization", "InstanceNormalization"}  # mix channels (or groups): torch's LN set
_ADDS = {"Add", "Sum"}
_NO_CHANNELS = {"Shape", "Size"}  # shape arithmetic carries no activations: never couples layers
# ops that channels are followed through (each output's sources = union of its inputs' sources)
PASS_THROUGH = {
    # element-wise
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Swish",
    "Tanh", "Softplus", "Softsign", "Mish", "Clip", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Pow",
    "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout", "Cast", "CastLike", "ThresholdedRelu",
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Not", "Mod",
    # normalisation
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "LRN", "MeanVarianceNormalization",
    # pooling, resampling, padding
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean",
    "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare",
    "Pad", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "ConvTranspose",
    # shape and layout
    "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Expand", "Tile", "Gather",
    "GatherElements", "Shape", "Size", "Constant", "ConstantOfShape", "Range",
    # the end of a classifier
    "Softmax", "LogSoftmax",
} | PRODUCERS
# timm's classifier module names: modules under these are counted in MACs, never analysed (as the timm adapter does)
HEAD_PREFIXES = ("fc", "head", "classifier", "pre_logits", "head_drop", "global_pool")
_NAME_OK = re.compile(r"[^\w.\-]")


@dataclass
class OnnxGraph:
    """What the runner needs besides the LayerGraph: tensor names to expose and to mask, the I/O of the graph."""

    graph: LayerGraph | None
    input_name: str
    output_name: str
    input_size: tuple[int, int, int]
    num_classes: int
    fixed_batch: int | None
    capture_tensor: dict[str, str] = field(default_factory=dict)  # layer → raw (pre-norm) output tensor
    mask_tensor: dict[str, str] = field(default_factory=dict)  # layer → tensor a mask multiplies (post-BN or raw)
    mask_layout: dict[str, str] = field(default_factory=dict)  # nchw | nhwc, the layout of the mask tensor


@dataclass
class _Producer:
    node: onnx.NodeProto
    name: str
    out: str  # the layer's output (a MatMul's bias Add included)
    weight: np.ndarray  # torch layout: conv (c_out, c_in/g, kh, kw); linear (out, in)
    folded: bool = False


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _meta(node) -> dict:
    return {p.key: p.value for p in node.metadata_props}


def _clean(name: str) -> str:
    return _NAME_OK.sub("_", name).strip(".") or "layer"


def _dynamo_modules(node) -> list[tuple[str, str]]:
    """(qualified name, class) of the torch modules a dynamo-exported node came from, outermost first."""
    ns = _meta(node).get("namespace", "")
    out = []
    for comp in ns.split("/"):
        name, _, cls = comp.partition(": ")
        if name and cls and not cls.startswith("aten."):
            out.append((name, cls))
    return out


def _legacy_scope(node) -> str | None:
    """'/layer1/layer1.0/conv1/Conv' → 'layer1.0.conv1': a Sequential child is named '<attr>.<index>'."""
    if not node.name.startswith("/"):
        return None
    comps = node.name.strip("/").split("/")[:-1]
    path: list[str] = []
    for c in comps:
        if path and c.startswith(path[-1] + "."):
            path[-1] = c
        else:
            path.append(c)
    return ".".join(path) or None


def _module_name(node, weight_name: str | None, weight_uses: dict[str, int], kinds=("Conv", "Linear")) -> str | None:
    mods = _dynamo_modules(node)
    if mods and any(k in mods[-1][1].rsplit(".", 1)[-1] for k in kinds):
        return mods[-1][0]
    if weight_name and weight_name.endswith(".weight") and not weight_name.startswith("onnx::") \
            and weight_uses.get(weight_name, 0) == 1:
        return weight_name[: -len(".weight")]
    return _legacy_scope(node) or (mods[-1][0] if mods else None)


class _Reader:
    def __init__(self, mp: onnx.ModelProto):
        self.mp = mp
        self.g = mp.graph
        self.init = {i.name: i for i in self.g.initializer}
        self.const_nodes = {n.output[0]: n for n in self.g.node if n.op_type == "Constant" and n.output}
        self.producer_of = {o: n for n in self.g.node for o in n.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.users.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in self.g.output}
        self._folded: dict[str, np.ndarray] = {}

    def value(self, name: str) -> np.ndarray:
        """The value of a tensor computed from initializers and constants alone (weights, possibly transposed)."""
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        if name in self.const_nodes:
            return numpy_helper.to_array(_attrs(self.const_nodes[name])["value"])
        if name not in self._folded:
            self._folded.update(self._fold([name]))
        return self._folded[name]

    def _fold(self, names: list[str]) -> dict[str, np.ndarray]:
        # the constant sub-graph behind `names`, evaluated by onnx's reference runtime (rare: Transpose of a weight...)
        from onnx.reference import ReferenceEvaluator
        needed, stack, inits, seen = {}, list(names), set(), set()
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in self.init:
                inits.add(t)
                continue
            n = self.producer_of[t]
            needed[id(n)] = n
            stack.extend(n.input)
        order = {id(n): k for k, n in enumerate(self.g.node)}
        needed = sorted(needed.values(), key=lambda n: order[id(n)])
        outs = [onnx.helper.make_empty_tensor_value_info(n) for n in names]
        sub = onnx.helper.make_graph(needed, "fold", [], outs, [self.init[i] for i in inits])
        model = onnx.helper.make_model(sub, opset_imports=self.mp.opset_import, ir_version=self.mp.ir_version)
        return dict(zip(names, ReferenceEvaluator(model).run(None, {})))


def _input_spec(mp: onnx.ModelProto, image_size: int | None, path: str):
    inits = {i.name for i in mp.graph.initializer}
    inputs = [i for i in mp.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ChanaxisError(f"'{path}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); chanaxis "
                            "reads image classifiers with one N×3×H×W input")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ChanaxisError(f"'{path}' takes a {len(dims)}-D input '{inp.name}'; chanaxis needs N×3×H×W images")
    _, c, h, w = dims
    if c not in (3, None):
        raise ChanaxisError(f"the input of '{path}' has {c} channels, {'×'.join(str(d) for d in dims[1:])}; the "
                            "datasets give 3×H×W (channels first) images")
    if h is not None and w is not None:
        if h != w:
            raise ChanaxisError(f"'{path}' takes {h}×{w} images; chanaxis datasets give square images")
        if image_size is not None and image_size != h:
            raise ChanaxisError(f"'{path}' takes {h}×{w} images but {image_size}×{image_size} were asked for "
                                f"(--image-size or the data card's); use a dataset at {h} px (--image-size {h})")
        image_size = h
    elif image_size is None:
        raise ChanaxisError(f"the input of '{path}' has no fixed height and width; pass --image-size")
    batch = dims[0] if dims[0] else None
    return inp.name, (3, int(image_size), int(image_size)), batch


def _shapes(mp: onnx.ModelProto, input_name: str, input_size) -> dict[str, tuple]:
    """Static shapes of every tensor for one image (onnx shape inference on a copy with a fixed 1×C×H×W input)."""
    m = onnx.ModelProto()
    m.CopyFrom(mp)
    for i in m.graph.input:
        if i.name == input_name:
            for d, v in zip(i.type.tensor_type.shape.dim, (1, *input_size)):
                d.Clear()
                d.dim_value = v
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference fails on graphs that do not fit the input
        raise ChanaxisError(f"the graph does not accept a 1×{'×'.join(map(str, input_size))} input "
                            f"({str(e).splitlines()[0][:160]}); check --image-size") from None
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            out[vi.name] = dims
    return out


def _probe(mp: onnx.ModelProto, input_name: str, input_size, names: list[str]) -> dict[str, tuple]:
    """Shapes that inference could not give, from one forward pass of a zero image on onnxruntime."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(mp)
    del m.graph.value_info[:]
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(names) if t not in have)
    elem = next(i.type.tensor_type.elem_type for i in m.graph.input if i.name == input_name)
    x = np.zeros((1, *input_size), onnx.helper.tensor_dtype_to_np_dtype(elem))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(list(dict.fromkeys(names)), {input_name: x})
    except Exception as e:  # noqa: BLE001 - the graph does not run on this input
        raise ChanaxisError(f"the graph does not run on a 1×{'×'.join(map(str, input_size))} input "
                            f"({str(e).splitlines()[0][:160]}); check --image-size") from None
    return {t: tuple(o.shape) for t, o in zip(dict.fromkeys(names), outs)}


def read(mp: onnx.ModelProto, path: str, image_size: int | None = None, min_channels: int = 4) -> OnnxGraph:
    """Analysed layers per METHOD §1, as chanaxis.torch_graph.build_graph finds them in the torch module."""
    input_name, input_size, fixed_batch = _input_spec(mp, image_size, path)
    r = _Reader(mp)
    if not mp.graph.output:
        raise ChanaxisError(f"'{path}' has no graph output; it is not a usable ONNX model")
    output_name = mp.graph.output[0].name
    last = r.producer_of.get(output_name)
    if last is not None and last.op_type == "Softmax":  # probabilities: the margin T needs the logits before them
        output_name = last.input[0]
    live = _live_path(r, input_name, output_name, path)
    shapes = _shapes(mp, input_name, input_size)
    w = _walk(r, live)
    missing = [t for p in w.producers.values() if p.node.op_type != "Gemm" for t in (p.out, p.node.input[0])
               if None in shapes.get(t, (None,))]
    if missing or None in shapes.get(output_name, (None,)):
        shapes.update(_probe(mp, input_name, input_size, missing + [output_name]))
    in_shape = {name: shapes[p.node.input[0]] if p.node.op_type != "Gemm" else () for name, p in w.producers.items()}

    head = set(w.src.get(output_name, frozenset()))  # the classifier: what feeds the logits directly
    layers, filters, other_macs = [], {}, {}
    og = OnnxGraph(graph=None, input_name=input_name, output_name=output_name, input_size=input_size,
                   num_classes=0, fixed_batch=fixed_batch)
    for name, p in w.producers.items():
        out_shape = (1, p.weight.shape[0]) if p.node.op_type == "Gemm" else shapes[p.out]
        n_macs = _macs(p, out_shape)
        excluded = name in head or any(name == h or name.startswith(h + ".") for h in HEAD_PREFIXES)
        analysed = not excluded and p.weight.shape[0] >= min_channels and (
            p.node.op_type == "Conv" or p.node.op_type == "MatMul" and len(in_shape[name]) == 4 and any(
                w.producers[c].node.op_type == "MatMul" and len(in_shape[c]) == 4 for c in w.consumers.get(name, [])))
        if not analysed:
            other_macs[name] = n_macs
            continue
        layer = _layer(p, out_shape, r, og)
        assert layer.macs == n_macs, (name, layer.macs, n_macs)
        layer.consumers = list(w.consumers.get(name, []))
        filters[name] = p.weight.astype(np.float32).reshape(layer.c_out, -1, *layer.kernel).copy()
        layers.append(layer)
    if not layers:
        raise ChanaxisError(f"'{path}' has no layer to analyse (no Conv with ≥ {min_channels} output channels); "
                            "chanaxis analyses convolutional networks")
    for d, layer in enumerate(layers):
        layer.depth = d
    assign_coupling_groups(layers, lambda name: w.uf[name])
    out_dims = shapes.get(output_name)
    if not out_dims or len(out_dims) != 2 or out_dims[1] is None:
        raise ChanaxisError(f"the output '{output_name}' of '{path}' is {out_dims}, not N×classes logits")
    og.graph = LayerGraph(layers, filters, other_macs, folded_bn=any(l.norm == "bn_folded" for l in layers))
    og.num_classes = int(out_dims[1])
    return og


def _live_path(r: _Reader, input_name: str, output_name: str, path: str) -> set[str]:
    """Tensors computed from the input; every op between the input and the logits must be one channels pass."""
    live = {input_name}
    for n in r.g.node:
        if any(i in live for i in n.input if i):
            live.update(o for o in n.output if o)
    if output_name not in live:
        raise ChanaxisError(f"the output '{output_name}' of '{path}' does not depend on its input")
    needed, stack = set(), [output_name]
    while stack:  # only what the logits depend on: ops on other outputs do not matter
        t = stack.pop()
        n = r.producer_of.get(t)
        if t in needed or t not in live or n is None:
            continue
        needed.add(t)
        stack.extend(n.input)
        domain = n.domain or "ai.onnx"
        if n.op_type not in PASS_THROUGH or domain != "ai.onnx":
            op = n.op_type if domain == "ai.onnx" else f"{domain}.{n.op_type}"
            raise ChanaxisError(f"unsupported ONNX op {op} at node '{n.name or n.output[0]}' on the path from the "
                                "input to the logits; chanaxis follows channels through standard CNN ops only "
                                "(export without it, or load the torch model)")
    return live


@dataclass
class _Walk:
    src: dict[str, frozenset[str]] = field(default_factory=dict)  # tensor → producers whose channels reach it
    consumers: dict[str, list[str]] = field(default_factory=dict)
    producers: dict[str, _Producer] = field(default_factory=dict)
    uf: UnionFind = field(default_factory=UnionFind)


def _walk(r: _Reader, live: set[str]) -> _Walk:
    """Producers in execution order, who consumes whom, and the residual unions (as torch_graph's fx walk)."""
    w = _Walk()
    weight_uses: dict[str, int] = {}
    for n in r.g.node:
        if n.op_type in PRODUCERS and len(n.input) > 1:
            weight_uses[n.input[1]] = weight_uses.get(n.input[1], 0) + 1
    used: set[str] = set()

    def unique(name: str) -> str:
        base = name = _clean(name)
        k = 1
        while name in used:  # a module called twice (shared weights) gets one layer per call
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    absorbed: set[str] = set()  # bias Add outputs that belong to their MatMul
    for n in r.g.node:
        if not any(i in live for i in n.input if i):
            continue
        ins = frozenset().union(*(w.src.get(i, frozenset()) for i in n.input if i in live))
        if n.op_type in _NO_CHANNELS:
            w.src.update({o: frozenset() for o in n.output})
            continue
        prod = _as_producer(n, r, live, weight_uses, unique)
        if prod is not None:
            for p in ins:
                if prod.name not in w.consumers.setdefault(p, []):
                    w.consumers[p].append(prod.name)
            w.producers[prod.name] = prod
            w.src[n.output[0]] = frozenset([prod.name])
            if prod.out != n.output[0]:
                absorbed.add(prod.out)
            continue
        if n.op_type in _ADDS and n.output[0] not in absorbed:
            ps = sorted(ins)
            for a, b in zip(ps, ps[1:]):
                w.uf.union(a, b)
        w.src.update({o: ins for o in n.output})
    return w


def _macs(p: _Producer, out_shape) -> int:
    w = p.weight
    if p.node.op_type == "Conv":  # weight (c_out, c_in/g, kh, kw)
        return macs(w.shape[2:], w.shape[1], w.shape[0], out_shape[2] * out_shape[3])
    return macs((1, 1), w.shape[0], w.shape[1], np.prod(out_shape[1:-1], dtype=np.int64))  # Linear, leading positions


def _layer(p: _Producer, out_shape, r: _Reader, og: OnnxGraph) -> Layer:
    """The Layer record, its own normalisation, where a mask goes (METHOD §6), and the tensors the runner uses."""
    n, w, name = p.node, p.weight, p.name
    if n.op_type == "Conv":
        a = _attrs(n)
        groups = int(a.get("group", 1))
        c_in = w.shape[1] * groups
        kind = "conv" if groups == 1 else ("dwconv" if groups == c_in else "gconv")
        layer = Layer(name=name, kind=kind, c_in=c_in, c_out=w.shape[0], groups=groups,
                      kernel=tuple(int(k) for k in w.shape[2:]), stride=tuple(int(s) for s in a.get("strides", (1, 1))),
                      out_hw=tuple(out_shape[2:4]), depth=0, layout="nchw")
    else:
        layer = Layer(name=name, kind="linear", c_in=w.shape[1], c_out=w.shape[0], groups=1, kernel=(1, 1),
                      stride=(1, 1), out_hw=tuple(out_shape[1:3]), depth=0, layout="nhwc")
    norm_node, norm_kind = _own_norm(p.out, r)
    mask_at, layout = p.out, layer.layout
    layer.mask_at = name
    if norm_node is not None:
        layer.norm, layer.norm_module = norm_kind, _norm_name(norm_node)
        if norm_kind == "bn":  # silence after a per-channel BN (channels first); before a norm that mixes channels
            mask_at, layout, layer.mask_at = norm_node.output[0], "nchw", layer.norm_module
    elif p.folded:
        layer.norm = "bn_folded"  # the conv's output already is the BN's: variances are post-BN
        mods = _dynamo_modules(n)  # dynamo's fused node keeps the BN module's scope
        layer.norm_module = mods[-1][0] if mods and "BatchNorm" in mods[-1][1] else None
    og.capture_tensor[name], og.mask_tensor[name], og.mask_layout[name] = p.out, mask_at, layout
    return layer


def _as_producer(n, r: _Reader, live, weight_uses, unique) -> _Producer | None:
    """A Conv (2-D, constant weight), a MatMul with a constant 2-D right operand, or a Gemm with constant B."""
    if n.op_type not in PRODUCERS or len(n.input) < 2:
        return None
    wname = n.input[1]
    if n.op_type == "Conv":
        if wname in live:
            raise ChanaxisError(f"unsupported Conv at node '{n.name or n.output[0]}': its weight is computed from "
                                "the input; chanaxis reads convolutions with constant filters")
        w = r.value(wname)
        if w.ndim != 4:  # 1-D/3-D convolutions pass channels through, as torch_graph treats non-Conv2d modules
            return None
        name = unique(_module_name(n, wname, weight_uses) or n.name or n.output[0])
        meta = _meta(n)
        folded = "BatchNorm" in meta.get("pkg.onnxscript.rewriter.rule_name", "") or \
            (wname.startswith("onnx::") and n.name.startswith("/"))
        return _Producer(n, name, n.output[0], w, folded=folded)
    if wname in live:
        return None  # activation × activation (attention-like): channels pass through
    w = r.value(wname)
    if w.ndim != 2:
        return None
    if n.op_type == "Gemm":
        a = _attrs(n)
        if a.get("transA", 0):
            return None
        w = w if a.get("transB", 0) else w.T
        name = unique(_module_name(n, wname, weight_uses) or n.name or n.output[0])
        return _Producer(n, name, n.output[0], w)
    w = w.T  # MatMul: x @ B with B (in, out); torch's Linear weight is (out, in)
    out = n.output[0]
    users = r.users.get(out, [])
    if len(users) == 1 and users[0].op_type == "Add" and out not in r.graph_outputs:
        other = [i for i in users[0].input if i != out]
        if len(other) == 1 and other[0] not in live:
            b = r.value(other[0])
            if b.size == w.shape[0] and (b.ndim == 1 or b.shape[-1] == w.shape[0]):
                out = users[0].output[0]  # the bias is part of the layer's output, as in nn.Linear
    name = unique(_module_name(n, wname, weight_uses) or n.name or n.output[0])
    return _Producer(n, name, out, w)


def _own_norm(out: str, r: _Reader):
    """The normalisation applied to this output alone, reached through single-use shape-only ops."""
    cur = out
    while cur not in r.graph_outputs:
        users = r.users.get(cur, [])
        if len(users) != 1:
            return None, "none"
        u = users[0]
        if u.op_type in _BN and u.input[0] == cur:
            return u, "bn"
        if u.op_type in _LN and u.input[0] == cur:
            return u, "ln"
        if u.op_type in _SHAPE_ONLY and u.input[0] == cur:
            cur = u.output[0]
            continue
        return None, "none"
    return None, "none"


def _norm_name(node) -> str:
    mods = _dynamo_modules(node)
    if mods:
        return mods[-1][0]
    scope = _legacy_scope(node)
    if scope:
        return scope
    scale = node.input[1] if len(node.input) > 1 else ""
    if scale.endswith(".weight"):
        return scale[: -len(".weight")]
    return node.name or node.output[0]
