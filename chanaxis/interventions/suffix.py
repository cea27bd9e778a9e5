"""Suffix runs: compute a layer's inputs once, then run only the rest of the network for each of its variants.

The cut is right after the layer's own module (its raw, pre-normalisation output, the hook point). The prefix
returns every live tensor crossing the cut — the layer output and whatever else later nodes read, the residual
stream included. The suffix takes those tensors repeated K times along the batch, applies K lesion masks where
`Model.run` would (after the layer's BN when one follows, else on the output itself) or K pre-norm replacements,
and returns K×N×classes logits. A model fx cannot split (or not a torch model) runs a full forward per variant
batch instead; `SuffixRunner.mode` says which.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import numpy as np
import torch
import torch.fx as fx

from ..model import Layer


def _apply_mask(t: torch.Tensor, mask: torch.Tensor | None, nhwc: bool) -> torch.Tensor:
    if mask is None:  # no lesion (replacement variants): x·1 = x exactly, so only the product's dtype is kept
        dtype = torch.promote_types(t.dtype, torch.float32)
        return t if t.dtype == dtype else t.to(dtype)
    k = mask.shape[0]
    s = t.shape
    shape = (k, 1, 1, 1, -1) if nhwc else (k, 1, -1, 1, 1)
    return (t.reshape(k, s[0] // k, *s[1:]) * mask.reshape(shape)).reshape(s)



def _repeat(v, k: int):
    # repeat copies even for k = 1: the suffix's in-place ops (ReLU, +=) must never touch the cache
    return v.repeat(k, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v


_TRACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _traced(module) -> fx.Graph:
    """One fx trace per module (the graph does not depend on the weights, which stay shared)."""
    if module not in _TRACES:
        from ..torch_graph import trace
        _TRACES[module] = trace(module)
    return _TRACES[module]


class SuffixRunner:
    """Lesion / replacement variants of one layer from cached inputs."""

    def __init__(self, model, layer: str, use_fx: bool = True):
        self.model = model
        self.layer: Layer = model.graph[layer]
        self.mode, self.reason = "full_forward", "not a torch model"
        if use_fx and hasattr(model, "module"):
            try:
                self._build()
                self.mode, self.reason = "suffix", ""
            except _NoSplit as e:
                self.reason = str(e)
        elif use_fx is False:
            self.reason = "suffix runs disabled"

    # ------------------------------------------------------------------------------------------------ split
    def _build(self) -> None:
        try:
            graph = _traced(self.model.module)
        except Exception as e:  # noqa: BLE001
            raise _NoSplit(f"fx cannot trace the model ({type(e).__name__})") from None
        nodes = list(graph.nodes)
        layer = self.layer

        def unique(target):
            hits = [n for n in nodes if n.op == "call_module" and n.target == target]
            if len(hits) != 1:
                raise _NoSplit(f"module {target} is called {len(hits)} times in the traced graph")
            return hits[0]

        cut, mask_node = unique(layer.name), unique(layer.mask_at)
        pos = nodes.index(cut)
        before, after = nodes[:pos + 1], nodes[pos + 1:]
        if nodes.index(mask_node) < pos:
            raise _NoSplit("the mask point runs before the layer")
        after_set = set(after)
        live = [n for n in before if n.op != "get_attr" and any(u in after_set for u in n.users)]

        pre = fx.Graph()
        env: dict = {}
        for n in before:
            env[n] = pre.node_copy(n, lambda a: env[a])
        pre.output(tuple(env[n] for n in live))

        post = fx.Graph()
        env = {}
        for n in live:
            env[n] = post.placeholder(f"live_{n.name}")
        mask_ph = post.placeholder("mask")
        nhwc = layer.layout == "nhwc" and layer.mask_at == layer.name
        for n in before:  # constants read after the cut are fetched again by the suffix
            if n.op == "get_attr" and any(u in after_set for u in n.users):
                env[n] = post.node_copy(n, lambda a: env[a])
        if mask_node is cut:
            env[cut] = post.call_function(_apply_mask, (env[cut], mask_ph, nhwc))
        for n in after:
            env[n] = post.node_copy(n, lambda a: env[a])
            if n is mask_node:
                env[n] = post.call_function(_apply_mask, (env[n], mask_ph, nhwc))
        root = self.model.module
        self._pre = fx.GraphModule(root, pre)
        self._pre.graph.eliminate_dead_code()
        self._pre.recompile()
        self._post = fx.GraphModule(root, post)
        self._cut_index = live.index(cut)

    # ------------------------------------------------------------------------------------------------ run
    @torch.no_grad()
    def prefix(self, x: torch.Tensor):
        """What the variants share: the live tensors at the cut (suffix) or the batch itself (full forward)."""
        x = torch.as_tensor(x).to(self.model.device if hasattr(self.model, "device") else "cpu", torch.float32)
        if self.mode != "suffix":
            return x
        self.model.module.eval()
        return list(self._pre(x))

    @torch.no_grad()
    def run(self, cache, mask=None, replace: Callable | None = None, k: int | None = None) -> torch.Tensor:
        """K×N×classes logits. `mask`: (K, C) multipliers (a lesion per row). `replace(y, k)`: rewrites the layer's
        raw output y (K·N rows, the layer's own layout) before its norm, for K variants."""
        if mask is not None:
            mask = torch.as_tensor(np.asarray(mask, np.float32)).to(self._device())
            k = mask.shape[0]
        if k is None:
            raise ValueError("give mask (K, C) or k with replace")
        if self.mode != "suffix":
            return self._full(cache, mask, replace, k)
        self.model.module.eval()
        vals = [_repeat(v, k) for v in cache]
        if replace is not None:
            vals[self._cut_index] = replace(vals[self._cut_index], k)
        out = self._post(*vals, mask)
        return out.reshape(k, -1, out.shape[-1])

    def _device(self):
        return getattr(self.model, "device", "cpu")

    def _full(self, x, mask, replace, k):
        if replace is None:
            if mask is None:
                mask = torch.ones(k, self.layer.c_out)
            logits, _ = self.model.run(x, masks={self.layer.name: mask})
            return torch.as_tensor(logits).reshape(k, -1, logits.shape[-1])
        if not hasattr(self.model, "module"):
            raise NotImplementedError("peer replacement needs a torch model (a hook on the layer's output)")
        with _replace_hook(self.model, self.layer.name, replace, k):
            logits, _ = self.model.run(x.repeat(k, 1, 1, 1))
        return torch.as_tensor(logits).reshape(k, -1, logits.shape[-1])


class _NoSplit(Exception):
    pass


@contextlib.contextmanager
def _replace_hook(model, name: str, fn: Callable, k: int):
    mod = dict(model.module.named_modules())[name]
    h = mod.register_forward_hook(lambda m, i, out: fn(out.clone(), k))
    try:
        yield
    finally:
        h.remove()


def naive_lesion(model, x, layer: str, mask) -> torch.Tensor:
    """K×N×classes logits, one full forward per variant (the reference the suffix must equal)."""
    outs = []
    for row in np.atleast_2d(np.asarray(mask, np.float32)):
        logits, _ = model.run(x, masks={layer: row})
        outs.append(torch.as_tensor(logits))
    return torch.stack(outs)
