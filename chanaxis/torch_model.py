"""A `Model` backed by a torch.nn.Module: capture through forward hooks, masks where METHOD §6 silences."""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .model import LayerGraph
from .torch_graph import build_graph, filters_of


def to_nchw(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if layout == "nhwc" else t


class TorchModel:
    """Wraps an nn.Module. The module is put in eval mode for `run`; BN statistics are never updated here."""

    capabilities = frozenset({"gradients", "train_step"})

    def __init__(self, module: nn.Module, input_size: tuple[int, int, int], num_classes: int,
                 spec: Mapping[str, Any] | None = None, exclude_prefixes: tuple[str, ...] = (),
                 device: str | torch.device = "cpu"):
        self.module = module.to(device)
        self.device = torch.device(device)
        self.input_size = tuple(input_size)
        self.num_classes = int(num_classes)
        self.spec = dict(spec or {})
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.graph: LayerGraph = build_graph(self.module, self.input_size, exclude_prefixes=self.exclude_prefixes,
                                             device=self.device)
        self._modules = dict(self.module.named_modules())

    def refresh_graph(self) -> None:
        """Re-read filters after the weights changed (training, loading a checkpoint): the architecture, and so the
        traced structure, is the same, so nothing is traced again."""
        mods = dict(self.module.named_modules())
        self.graph.set_filters({name: filters_of(mods[name]) for name in self.graph.names})

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    @contextlib.contextmanager
    def _hooks(self, capture, masks, k_variants, out: dict):
        handles = []
        try:
            for name, mask in (masks or {}).items():
                layer = self.graph[name]
                m = torch.as_tensor(mask, dtype=torch.float32, device=self.device)
                if m.ndim == 1:
                    m = m.expand(k_variants, -1)
                shape = (k_variants, 1, 1, 1, -1) if layer.layout == "nhwc" and layer.mask_at == name \
                    else (k_variants, 1, -1, 1, 1)

                def mask_hook(mod, inp, output, m=m, shape=shape):
                    s = output.shape
                    return (output.reshape(k_variants, s[0] // k_variants, *s[1:]) * m.reshape(shape)).reshape(s)

                handles.append(self._modules[layer.mask_at].register_forward_hook(mask_hook))
            items = capture.items() if isinstance(capture, Mapping) else ((n, None) for n in (capture or ()))
            for name, reducer in items:
                layer = self.graph[name]

                def cap_hook(mod, inp, output, name=name, layout=layer.layout, reducer=reducer):
                    t = to_nchw(output, layout)
                    # reduce or copy at once: later in-place ops (ReLU, residual +=) may rewrite this memory
                    out[name] = reducer(t) if reducer is not None else t.detach().clone()

                # capture hooks go first so they see the raw (pre-mask, pre-norm) output of the layer itself
                handles.insert(0, self._modules[name].register_forward_hook(cap_hook, prepend=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, batch, capture: Iterable[str] | Mapping[str, Callable] | None = None,
            masks: Mapping[str, Any] | None = None, grad: bool = False):
        k = 1
        for m in (masks or {}).values():
            shape = np.shape(m)
            if len(shape) == 2:
                if k not in (1, shape[0]):
                    raise ValueError("all batched masks must have the same number of variants")
                k = shape[0]
        x = torch.as_tensor(batch).to(self.device, torch.float32)
        batched = any(np.ndim(m) == 2 for m in (masks or {}).values())
        if k > 1:
            x = x.repeat(k, 1, 1, 1)
        out: dict[str, torch.Tensor] = {}
        self.module.eval()
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self._hooks(capture, masks, k, out):
            logits = self.module(x)
        if batched:
            logits = logits.reshape(k, -1, logits.shape[-1])
        return logits, out
