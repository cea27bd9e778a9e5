"""The `Model` contract: a LayerGraph of analysed layers plus a runner that captures and masks them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

import networkx as nx
import numpy as np

LAYER_KINDS = ("conv", "dwconv", "gconv", "linear")
INPUT, OPAQUE = "<input>", "<opaque>"  # the image; a tensor whose channels cannot be traced back (cat, LN, ...)


def macs(kernel: tuple[int, int], c_in_per_group: int, c_out: int, positions: int) -> int:
    """The one MACs formula: multiply-accumulates of a conv or linear layer for one image,
    k_h·k_w · (input channels per group) · output channels · output positions (a linear layer: kernel 1×1, its
    leading positions). Every MACs count in chanaxis (layer graph, ONNX graph, pruning) comes from here."""
    return int(kernel[0]) * int(kernel[1]) * int(c_in_per_group) * int(c_out) * int(positions)


@dataclass
class Layer:
    """One channel-bearing layer that chanaxis analyses (METHOD §1)."""

    name: str
    kind: str  # conv | dwconv | gconv | linear (channels-last pointwise, e.g. ConvNeXt MLP hidden units)
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    out_hw: tuple[int, int]
    depth: int  # execution order among analysed layers
    layout: str = "nchw"  # how the layer's own output tensor is laid out: nchw | nhwc
    norm: str = "none"  # what follows: bn (per channel) | bn_folded (ONNX: BN folded into the layer) | ln | none
    norm_module: str | None = None
    mask_at: str | None = None  # module whose output a lesion mask multiplies (METHOD §6)
    consumers: list[str] = field(default_factory=list)
    group: np.ndarray | None = None  # coupling group id of each output channel (residual adds tie channels)

    @property
    def macs_per_channel(self) -> int:
        """Multiply-accumulates per output channel for one image."""
        return macs(self.kernel, self.c_in // self.groups, 1, self.out_hw[0] * self.out_hw[1])

    @property
    def macs(self) -> int:
        return self.macs_per_channel * self.c_out


@dataclass
class ModuleInfo:
    name: str
    c_in: int
    c_out: int
    groups: int
    macs: int  # MACs per image with every channel kept


@dataclass
class Dataflow:
    """For every conv/linear module, in execution order: which modules produce the channels it reads."""

    order: list[str]
    info: dict[str, ModuleInfo]
    sources: dict[str, frozenset[str]]
    traced: bool  # False: read from the LayerGraph alone (analysed layers only; other modules counted in full)


class LayerGraph:
    """Analysed layers in execution order, as a networkx DiGraph (edge = producer feeds consumer).

    `other_macs` holds the MACs of conv/linear modules that are not analysed (the classifier, convs with
    fewer than 4 outputs), so `total_macs` is the whole network's count. `flow`: every conv/linear module's channel
    sources under the pruning rules, where the graph was read from a traced torch module (else None).
    """

    def __init__(self, layers: Iterable[Layer], filters: Mapping[str, np.ndarray], other_macs: Mapping[str, int],
                 folded_bn: bool = False, flow: Dataflow | None = None):
        self.g = nx.DiGraph()
        self._filters = dict(filters)
        self.other_macs = dict(other_macs)
        self.folded_bn = folded_bn
        self.flow = flow
        for layer in sorted(layers, key=lambda l: l.depth):
            self.g.add_node(layer.name, layer=layer)
        for layer in self.layers:
            for c in layer.consumers:
                if c in self.g:
                    self.g.add_edge(layer.name, c)

    @property
    def layers(self) -> list[Layer]:
        return [self.g.nodes[n]["layer"] for n in self.g.nodes]

    @property
    def names(self) -> list[str]:
        return list(self.g.nodes)

    def __getitem__(self, name: str) -> Layer:
        return self.g.nodes[name]["layer"]

    def __contains__(self, name: str) -> bool:
        return name in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def set_filters(self, filters: Mapping[str, np.ndarray]) -> None:
        """New weights of the same architecture (a checkpoint loaded, a training step): the structure stays."""
        missing = set(self._filters) - set(filters)
        if missing:
            raise ValueError(f"filters missing for {sorted(missing)[:3]}")
        self._filters = {k: filters[k] for k in self._filters}

    def filters(self, name: str) -> np.ndarray:
        """The layer's filters as (c_out, c_in/groups, kh, kw) float32 (linear: (c_out, c_in, 1, 1))."""
        return self._filters[name]

    @property
    def analysed_macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def total_macs(self) -> int:
        return self.analysed_macs + sum(self.other_macs.values())


def assign_coupling_groups(layers: list[Layer], root_of: Callable[[str], Any]) -> None:
    """Channel c of every layer in one residual union (same `root_of(name)`) shares one coupling id."""
    members: dict[Any, list[Layer]] = {}
    for layer in layers:
        members.setdefault(root_of(layer.name), []).append(layer)
    next_id = 0
    for group_layers in members.values():
        width = max(l.c_out for l in group_layers)
        for layer in group_layers:
            layer.group = next_id + np.arange(layer.c_out)
        next_id += width


@runtime_checkable
class Model(Protocol):
    """What an adapter returns. See DESIGN.md: `graph`, `run`, declared capabilities."""

    graph: LayerGraph
    num_classes: int
    input_size: tuple[int, int, int]
    spec: dict[str, Any]
    capabilities: frozenset[str]  # subset of {"gradients", "run_from", "train_step"}

    def run(self, batch, capture: Iterable[str] | Mapping[str, Callable] | None = None,
            masks: Mapping[str, Any] | None = None):
        """Forward `batch` (N×3×H×W float). Returns (logits, {layer: captured}).

        `capture`: layer names (the full pre-normalisation output, N×C×H×W, copied) or a mapping
        layer → reducer applied at once to that output (N×C×H×W view, before any in-place op can touch it).
        `masks`: layer → (C,) or (K, C) multipliers applied where METHOD §6 silences a channel; with a
        leading K, the batch runs as K variants and logits come back as K×N×classes.
        """
        ...

    def weights_sha256(self) -> str: ...
