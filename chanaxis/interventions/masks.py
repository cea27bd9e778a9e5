"""Lesion and pruning masks (METHOD §6–7) and analytic MACs from the channels a mask leaves alive.

A lesion mask is what `Model.run(masks=...)` applies: a (K, C) batch of multipliers at `layer.mask_at`.
A pruning plan turns per-layer keep vectors into *effective* masks with METHOD §7's rules — a masked channel on a
residual branch adds 0 (the stream channel lives while any producer keeps it, so shortcut convs keep their
inputs), depthwise/grouped convs follow the mask of their input channels, MobileNetV2 prunes only pointwise convs —
and counts MACs from the effective kept input and output channels of every conv and linear module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model import INPUT, Dataflow, LayerGraph, ModuleInfo

EFFICIENTNET_POINTWISE = ("conv_pw", "conv_pwl", "conv_head")


def lesion_variants(c_out: int, channels) -> np.ndarray:
    """(K, C) float32 masks, row k silencing channels[k] only."""
    channels = np.asarray(channels, np.intp).reshape(-1)
    m = np.ones((len(channels), c_out), np.float32)
    m[np.arange(len(channels)), channels] = 0.0
    return m


def dataflow(model) -> Dataflow:
    """The channel sources of every conv/linear module: traced with the graph of a torch module (`graph.flow`);
    else (ONNX, a graph built without tracing) read from the LayerGraph's analysed layers alone."""
    graph: LayerGraph = model.graph
    if graph.flow is not None:
        return graph.flow
    info = {l.name: ModuleInfo(l.name, l.c_in, l.c_out, l.groups, l.macs) for l in graph.layers}
    producers = {l.name: [p.name for p in graph.layers if l.name in p.consumers] for l in graph.layers}
    sources = {n: frozenset(p or [INPUT]) for n, p in producers.items()}
    return Dataflow(graph.names, info, sources, traced=False)


def prunable_layers(graph: LayerGraph) -> list[str]:
    """Layers whose channels a pruning score may remove (METHOD §7).

    timm's EfficientNet family (MobileNetV2: `conv_pw`/`conv_pwl`) prunes only its pointwise convs. Elsewhere every
    dense conv and channels-last linear whose output is not followed by a channel-mixing norm: a mask before a
    LayerNorm cannot stand for removing the channel, since LayerNorm would re-centre the zero.
    Depthwise and grouped convs are never scored: they follow their inputs (so a conv whose mask would reach a
    LayerNorm through them is not pruned either: ConvNeXt prunes its MLP hidden units).
    """
    names = graph.names
    if any(n.rsplit(".", 1)[-1] == "conv_pwl" for n in names):
        return [n for n in names if n.rsplit(".", 1)[-1] in EFFICIENTNET_POINTWISE and graph[n].kind == "conv"]

    def reaches_ln(name) -> bool:  # through the depthwise/grouped convs that would follow its mask
        return any(c in graph and graph[c].kind in ("dwconv", "gconv") and (graph[c].norm == "ln" or reaches_ln(c))
                   for c in graph[name].consumers)
    return [l.name for l in graph.layers if l.kind in ("conv", "linear") and l.norm != "ln" and not reaches_ln(l.name)]


@dataclass
class Effective:
    out_keep: dict[str, np.ndarray]  # analysed layer -> (C,) bool, after the follow rules
    in_live: dict[str, np.ndarray]  # every conv/linear module -> (C_in,) bool
    out_all: dict[str, np.ndarray]  # every conv/linear module -> (C_out,) bool


class PruningPlan:
    """Keep vectors of the prunable layers → effective masks, per-module live channels and analytic MACs."""

    def __init__(self, model):
        self.graph: LayerGraph = model.graph
        self.flow = dataflow(model)
        self.prunable = prunable_layers(self.graph)
        self.followers = [l.name for l in self.graph.layers if l.kind in ("dwconv", "gconv")]

    def effective(self, keep: dict[str, np.ndarray]) -> Effective:
        bad = set(keep) - set(self.prunable)
        if bad:
            raise ValueError(f"not prunable: {sorted(bad)[:3]}")
        out_all: dict[str, np.ndarray] = {}
        in_live: dict[str, np.ndarray] = {}
        for name in self.flow.order:
            inf = self.flow.info.get(name)
            if inf is None:
                continue
            live = np.zeros(inf.c_in, bool)
            for s in self.flow.sources.get(name, frozenset([INPUT])):
                prod = out_all.get(s)
                live |= prod if prod is not None and prod.shape[0] == inf.c_in else True
            in_live[name] = live
            out = np.ones(inf.c_out, bool)
            if name in keep:
                out = np.asarray(keep[name], bool).copy()
                if out.shape != (inf.c_out,):
                    raise ValueError(f"keep vector of {name} has shape {out.shape}, expected ({inf.c_out},)")
            elif name in self.followers:
                g = inf.groups
                group_alive = live.reshape(g, -1).any(1)
                out = np.repeat(group_alive, inf.c_out // g)
            out_all[name] = out
        out_keep = {n: out_all[n] for n in self.graph.names if n in out_all}
        return Effective(out_keep, in_live, out_all)

    def masks(self, eff: Effective) -> dict[str, np.ndarray]:
        """Run-time masks (float32) for the analysed layers that lose a channel."""
        return {n: k.astype(np.float32) for n, k in eff.out_keep.items() if not k.all()}

    def macs(self, eff: Effective | None = None) -> int:
        """k_h·k_w·C_in,kept/groups·C_out,kept·H·W summed per group over every conv/linear (classifier included)."""
        total = 0
        for name, inf in self.flow.info.items():
            per_pair = inf.macs / ((inf.c_in // inf.groups) * inf.c_out)
            if eff is None or name not in eff.in_live:
                kept = (inf.c_in // inf.groups) * inf.c_out
            else:
                g = inf.groups
                kept = int((eff.in_live[name].reshape(g, -1).sum(1) * eff.out_all[name].reshape(g, -1).sum(1)).sum())
            total += per_pair * kept
        if not self.flow.traced:
            total += sum(self.graph.other_macs.values())
        return int(round(total))

    @property
    def full_macs(self) -> int:
        return self.macs(None)

    def n_prunable(self) -> int:
        return sum(self.graph[n].c_out for n in self.prunable)


class PrunedZeros:
    """Removes what the effective masks silence by editing weights: filter, bias, BN affine and running stats of
    every silenced output channel, and the input slices that consumers read from dead channels.

    The indices are derived once, on the parameters' devices; each call then writes the zeros (and BN's unit
    variances) with one in-place op per tensor, so fine-tuning can re-apply it after every step at no real cost."""

    def __init__(self, module: nn.Module, graph: LayerGraph, eff: Effective):
        mods = dict(module.named_modules())
        self._fills: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (tensor, output rows, value)
        self._masked: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, bool mask over (out, in/g, 1…))
        for name, keep in eff.out_keep.items():
            drop = np.flatnonzero(~keep)
            if drop.size == 0:
                continue
            layer = graph[name]
            m = mods[name]
            self._fill(m.weight, drop, 0.0)
            self._fill(m.bias, drop, 0.0)
            if layer.norm == "bn":
                bn = mods[layer.norm_module]
                self._fill(bn.weight, drop, 0.0)
                self._fill(bn.bias, drop, 0.0)
                self._fill(getattr(bn, "running_mean", None), drop, 0.0)
                self._fill(getattr(bn, "running_var", None), drop, 1.0)
        for name, live in eff.in_live.items():
            dead = np.flatnonzero(~live)
            m = mods.get(name)
            if dead.size == 0 or m is None:
                continue
            w = m.weight  # conv (out, in/g, kh, kw) or linear (out, in)
            groups = getattr(m, "groups", 1)
            in_per, out_per = w.shape[1], w.shape[0] // groups
            hit = np.zeros(w.shape[:2], bool)
            for c in dead:  # input channel c reaches only the outputs of its group, at its slot in the group
                g = c // in_per
                hit[g * out_per:(g + 1) * out_per, c % in_per] = True
            mask = torch.as_tensor(hit, device=w.device).reshape(*hit.shape, *([1] * (w.ndim - 2)))
            self._masked.append((w, mask))

    def _fill(self, t, rows: np.ndarray, value: float) -> None:
        if t is not None:
            self._fills.append((t, torch.as_tensor(rows, dtype=torch.long, device=t.device), value))

    @torch.no_grad()
    def __call__(self) -> None:
        for t, rows, value in self._fills:
            t.index_fill_(0, rows, value)
        for w, mask in self._masked:
            w.masked_fill_(mask, 0.0)


def zero_pruned(module: nn.Module, graph: LayerGraph, eff: Effective) -> None:
    """Remove what the effective masks silence by editing weights (once; see `PrunedZeros`, which fine-tuning
    builds once and re-applies after every step, so pruned parameters stay exactly zero)."""
    PrunedZeros(module, graph, eff)()


def random_keep(plan: PruningPlan, fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """A keep vector per prunable layer silencing a random `fraction` of its channels (≥ 1 kept); for tests."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in plan.prunable:
        c = plan.graph[n].c_out
        k = np.ones(c, bool)
        k[rng.choice(c, min(c - 1, int(round(fraction * c))), replace=False)] = False
        out[n] = k
    return out
