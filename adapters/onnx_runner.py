"""Run an ONNX graph on onnxruntime with the same `run` contract as chanaxis.torch_model.TorchModel.

Three sessions, each built on first use from one proto: `plain` (logits only), `capture` (every analysed layer's raw
output added as a graph output) and `masked` (the same plus one mask input per layer: Mul nodes after the BN, or after
the layer where no BN follows). A mask input defaults to ones through an initializer of the same name, so a run feeds
only the masks it changes and lesions never rebuild a session.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from chanaxis.capabilities import require
from chanaxis.errors import ChanaxisError

from .onnx_graph import OnnxGraph

_MASK = "chanaxis.mask:"
_MASK_SHAPE = "chanaxis.mask_shape:"
_MASKED = "chanaxis.masked:"


def providers_for(device: str) -> list:
    import onnxruntime as ort
    device = str(device)
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ChanaxisError("CUDA was asked for but onnxruntime has no CUDA provider here (install the gpu extra, "
                                "onnxruntime-gpu, with a CUDA driver); use --device cpu")
        idx = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
    if device != "cpu":
        raise ChanaxisError(f"unknown device '{device}'; use cpu or cuda")
    return ["CPUExecutionProvider"]


def dynamic_batch(mp: onnx.ModelProto, input_name: str) -> None:
    """Make the batch dimension symbolic in place; stale intermediate shapes would pin it, so they go."""
    for vi in [i for i in mp.graph.input if i.name == input_name] + list(mp.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del mp.graph.value_info[:]


def instrument(mp: onnx.ModelProto, og: OnnxGraph, masks: bool) -> onnx.ModelProto:
    """A copy exposing each layer's raw output; with `masks`, a Mul by a per-row mask input after each mask point."""
    m = onnx.ModelProto()
    m.CopyFrom(mp)
    g = m.graph
    have = {o.name for o in g.output}
    for layer in og.graph.layers:
        t = og.capture_tensor[layer.name]
        if t not in have:
            g.output.append(helper.make_empty_tensor_value_info(t))
            have.add(t)
    if not masks:
        return m
    elem = next(i.type.tensor_type.elem_type for i in g.input if i.name == og.input_name)
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    at: dict[str, list[onnx.NodeProto]] = {}
    rename: dict[str, str] = {}
    for layer in og.graph.layers:
        t, c = og.mask_tensor[layer.name], layer.c_out
        inp, shp, out = _MASK + layer.name, _MASK_SHAPE + layer.name, _MASKED + layer.name
        g.input.append(helper.make_tensor_value_info(inp, elem, ["mask_rows", c]))
        g.initializer.append(numpy_helper.from_array(np.ones((1, c), np_dtype), inp))
        shape = [-1, c, 1, 1] if og.mask_layout[layer.name] == "nchw" else [-1, 1, 1, c]
        g.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), shp))
        at.setdefault(t, []).extend([helper.make_node("Reshape", [inp, shp], [shp + ":out"]),
                                     helper.make_node("Mul", [t, shp + ":out"], [out])])
        rename[t] = out
    nodes = []
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
        nodes.append(n)
        for o in n.output:
            nodes.extend(at.get(o, ()))
    del g.node[:]
    g.node.extend(nodes)
    return m


class OnnxModel:
    """A `Model` on onnxruntime. No gradients: what needs them raises CapabilityError naming the torch model."""

    capabilities = frozenset()

    def __init__(self, mp: onnx.ModelProto, og: OnnxGraph, spec: Mapping[str, Any], device: str = "cpu"):
        self.og = og
        self.graph = og.graph
        self.num_classes = og.num_classes
        self.input_size = tuple(og.input_size)
        self.spec = dict(spec)
        self.providers = providers_for(device)
        self.device = torch.device("cpu")  # where `run` returns its tensors, whatever provider computes them
        if og.output_name not in {o.name for o in mp.graph.output}:  # the logits behind a final Softmax
            mp.graph.output.insert(0, helper.make_empty_tensor_value_info(og.output_name))
        dynamic_batch(mp, og.input_name)
        self._proto = mp
        self._sessions: dict[str, Any] = {}
        self._sha: str | None = None
        elem = next(i.type.tensor_type.elem_type for i in mp.graph.input if i.name == og.input_name)
        self._dtype = helper.tensor_dtype_to_np_dtype(elem)
        self._sliced = False  # set when the graph only runs at its exported batch size

    def __repr__(self):
        return f"OnnxModel({self.spec.get('source')!r}, {len(self.graph)} layers, {self.providers[0]!s})"

    def weights_sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256()
            for t in sorted(self._proto.graph.initializer, key=lambda t: t.name):
                h.update(t.name.encode())
                h.update(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def session(self, kind: str = "plain"):
        if kind not in self._sessions:
            import onnxruntime as ort
            proto = self._proto if kind == "plain" else instrument(self._proto, self.og, masks=kind == "masked")
            so = ort.SessionOptions()
            so.log_severity_level = 3  # mask inputs are overridable initializers: ORT warns about each one
            if self.providers[0] == "CPUExecutionProvider":
                so.intra_op_num_threads = torch.get_num_threads()
                # idle workers sleep instead of spinning: the data loader and the store writer share these cores
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                self._sessions[kind] = ort.InferenceSession(proto.SerializeToString(), so, providers=self.providers)
            except Exception as e:  # noqa: BLE001 - onnxruntime refuses the graph: say so in one line
                raise ChanaxisError(f"onnxruntime cannot load '{self.spec.get('source')}' "
                                    f"({str(e).splitlines()[0][:200]})") from None
        return self._sessions[kind]

    def run(self, batch, capture: Iterable[str] | Mapping[str, Callable] | None = None,
            masks: Mapping[str, Any] | None = None, grad: bool = False):
        if grad:
            require(self, "gradients", what="a backward pass")
        masks = dict(masks or {})
        k, batched = 1, False
        for name, m in masks.items():
            if name not in self.graph:
                raise ChanaxisError(f"unknown layer '{name}' in masks")
            shape = np.shape(m)
            if len(shape) == 2:
                if k not in (1, shape[0]):
                    raise ValueError("all batched masks must have the same number of variants")
                k, batched = shape[0], True
        x = torch.as_tensor(batch).detach().to("cpu", torch.float32).numpy()
        if tuple(x.shape[1:]) != self.input_size:
            raise ChanaxisError(f"the model takes {'×'.join(map(str, self.input_size))} images, not "
                                f"{'×'.join(map(str, x.shape[1:]))}")
        if k > 1:
            x = np.tile(x, (k, 1, 1, 1))
        n = x.shape[0] // k
        feeds = {self.og.input_name: np.ascontiguousarray(x, dtype=self._dtype)}
        for name, m in masks.items():
            arr = torch.as_tensor(m).detach().to("cpu", torch.float32).numpy().astype(self._dtype)
            if arr.ndim == 1:
                arr = np.broadcast_to(arr, (k, arr.shape[0]))
            feeds[_MASK + name] = np.ascontiguousarray(np.repeat(arr, n, axis=0))
        reducers = capture if isinstance(capture, Mapping) else {c: None for c in (capture or ())}
        for name in reducers:
            if name not in self.graph:
                raise ChanaxisError(f"unknown layer '{name}' to capture")
        kind = "masked" if masks else ("capture" if reducers else "plain")
        names = [self.og.output_name] + [self.og.capture_tensor[l] for l in reducers]
        res = self._run(kind, names, feeds)
        logits = torch.from_numpy(np.asarray(res[0], np.float32))
        if batched:
            logits = logits.reshape(k, -1, logits.shape[-1])
        out = {}
        for (name, reducer), arr in zip(reducers.items(), res[1:]):
            t = torch.from_numpy(np.asarray(arr, np.float32))
            if self.graph[name].layout == "nhwc":
                t = t.permute(0, 3, 1, 2)
            out[name] = reducer(t) if reducer is not None else t
        return logits, out

    def _run(self, kind, names, feeds):
        sess = self.session(kind)
        rows = feeds[self.og.input_name].shape[0]
        fixed = self.og.fixed_batch
        if not self._sliced or not fixed or rows == fixed:
            quiet = None
            if fixed and rows != fixed:  # a trial run that may fail: onnxruntime would log the failure itself
                import onnxruntime as ort
                quiet = ort.RunOptions()
                quiet.log_severity_level = 4
            try:
                return sess.run(names, feeds, quiet)
            except Exception as e:  # noqa: BLE001 - a graph exported with a fixed batch size
                if not fixed or rows == fixed:
                    raise ChanaxisError(f"onnxruntime failed on '{self.spec.get('source')}' "
                                        f"({str(e).splitlines()[0][:200]})") from None
                self._sliced = True
        # the graph only runs `fixed` rows at a time: run slices, padding the last one
        parts = []
        for lo in range(0, rows, fixed):
            sl = {}
            for key, v in feeds.items():
                piece = v[lo:lo + fixed]
                if piece.shape[0] < fixed:
                    pad = np.zeros((fixed - piece.shape[0], *piece.shape[1:]), piece.dtype)
                    piece = np.concatenate([piece, pad])
                sl[key] = piece
            got = sess.run(names, sl)
            parts.append([g[: min(fixed, rows - lo)] for g in got])
        return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
