"""Gradient geometry (METHOD §4) from one extra forward pass over calibration images.

Why a dedicated pass rather than accumulating at capture: it needs the layers' *input* patches, whose covariance is
d×d per layer (d = k²·C_in, up to 4 608 in VGG-16): carrying that through capture would cost more than the capture
itself and break its streaming budget. We never form Σ_X: since Y_i = w_iᵀx + b exactly, Σ_X w_i = Cov(x, Y_i),
accumulated as Σ x·yᵀ per group — n·d·C work instead of n·d² — with y the layer's own output, taken by a forward
hook at the same sampled positions as the store's, and T read from the store (the margin of each calibration image).
Only the sampled input windows are gathered (no full unfold).

The sums add over images, so the pass splits into batches of images (`geometry_partial`, one unit of the metrics
stage each) whose float64 sums (`_Acc.state`) are added afterwards (`reduce_sums`); `geometry_pass` runs every image
in this process (the trajectory stage's per-checkpoint pass).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import store
from .estimators.structure import grad_cos_vectors
from .torch_model import to_nchw
from .sampling import sample_positions


class _Acc:
    """Float64 running sums for one layer: n, Σx, Σx·T, ΣT, ΣY, Σx·Yᵀ (per group)."""

    def __init__(self, layer, weight):
        self.layer = layer
        self.g = layer.groups
        self.cpg = layer.c_out // self.g
        self.w = torch.as_tensor(weight, dtype=torch.float64).reshape(self.g, self.cpg, -1)  # (g, cpg, d_g)
        d = self.w.shape[2]
        self.n = 0
        self.sx = torch.zeros(self.g, d, dtype=torch.float64)
        self.sxt = torch.zeros(self.g, d, dtype=torch.float64)
        self.st = 0.0
        self.sy = torch.zeros(self.g, self.cpg, dtype=torch.float64)
        self.sxy = torch.zeros(self.g, d, self.cpg, dtype=torch.float64)

    SUMS = ("sx", "sxt", "sy", "sxy")

    def state(self) -> np.ndarray:
        """The running sums as one flat float64 vector: n, ΣT, then Σx, Σx·T, ΣY, Σx·Yᵀ (what a batch unit stores)."""
        return np.concatenate([[float(self.n), float(self.st)]] + [getattr(self, k).numpy().reshape(-1)
                                                                    for k in self.SUMS])

    def merge(self, flat: np.ndarray) -> None:
        """Add the sums of another batch of images (`state()` of an accumulator of the same layer)."""
        flat = np.asarray(flat, np.float64)
        self.n += int(round(flat[0]))
        self.st += float(flat[1])
        at = 2
        for k in self.SUMS:
            cur = getattr(self, k)
            cur += torch.from_numpy(flat[at:at + cur.numel()].reshape(cur.shape).copy())
            at += cur.numel()
        if at != flat.size:
            raise ValueError(f"geometry sums of {self.layer.name}: {flat.size} values, expected {at}")

    def add(self, x, y, t):
        """x: (n, g, d) patches; y: (n, g, cpg) the layer's outputs there; t: (n,) target of each patch's image.
        METHOD: sums in float64. y is the network's own output (its bias shifts no covariance)."""
        x, y, t = x.double(), y.double(), t.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sxt += torch.einsum("ngd,n->gd", x, t)
        self.st += float(t.sum())
        self.sy += y.sum(0)
        self.sxy += torch.einsum("ngd,ngc->gdc", x, y)

    def grad_cos(self) -> np.ndarray:
        n = self.n
        mx, my, mt = self.sx / n, self.sy / n, self.st / n
        a = self.sxy / n - mx[:, :, None] * my[:, None, :]  # Cov(x_g, Y_i) = Σ_X w_i   (g, d, cpg)
        c = self.sxt / n - mx * mt  # Cov(x_g, T)   (g, d)
        w = self.w
        D = torch.einsum("gcd,gdc->gc", w, a)
        b = torch.einsum("gcd,gd->gc", w, c)
        a_i = a.permute(0, 2, 1).reshape(-1, a.shape[1])
        c_i = c[:, None, :].expand(-1, self.cpg, -1).reshape(-1, c.shape[1])
        return grad_cos_vectors(a_i.numpy(), c_i.numpy(), D.reshape(-1).numpy(), b.reshape(-1).numpy())


def patches(module, layer, inp: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Input patches at the sampled output positions: (B·s, groups, d_g), in `F.unfold`'s (channel, kh, kw) order.

    Only the sampled windows are gathered from the padded input (B·s·C_in·k² values) — unfolding every position
    first would materialise C_in·k² × H·W values per image, most of them thrown away."""
    b = inp.shape[0]
    if layer.kind == "linear":  # channels-last pointwise: the patch is the input vector itself
        flat = inp.reshape(b, -1, inp.shape[-1])
        x = flat.gather(1, pos[:, :, None].expand(-1, -1, flat.shape[2]))
        return x.reshape(-1, 1, flat.shape[2]).float()
    (kh, kw), (sh, sw), (dh, dw) = (_pair(module.kernel_size), _pair(module.stride), _pair(module.dilation))
    ph, pw = _pair(module.padding)
    xp = F.pad(inp.float(), (pw, pw, ph, ph))
    w_out = layer.out_hw[1]
    oh, ow = pos // w_out, pos % w_out                                           # (B, s)
    rows = (oh * sh)[:, :, None] + torch.arange(kh, device=pos.device) * dh      # (B, s, kh)
    cols = (ow * sw)[:, :, None] + torch.arange(kw, device=pos.device) * dw      # (B, s, kw)
    bidx = torch.arange(b, device=pos.device)[:, None, None, None]
    x = xp[bidx, :, rows[:, :, :, None], cols[:, :, None, :]]                    # (B, s, kh, kw, C_in)
    x = x.permute(0, 1, 4, 2, 3).reshape(b * pos.shape[1], -1)                   # (B·s, C_in·kh·kw)
    return x.reshape(x.shape[0], layer.groups, x.shape[1] // layer.groups)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


FORWARD_BATCH = 64   # images per forward pass of the geometry pass


def has_gradients(model) -> bool:
    return "gradients" in getattr(model, "capabilities", ()) and hasattr(model, "module")


def geometry_images(grp, p) -> int:
    """How many calibration images the pass reads: the first `p["geometry_images"]` of the store's."""
    return min(int(grp[store.samples_array("dataset_index")].shape[0]), int(p["geometry_images"]))


def geometry_pass(run, grp, layers, p, model, bar, loader_for=None, workers: int | None = None):
    """Per-channel grad_cos for every layer on `model` (the study's, on its device), or None when the model cannot
    run it (no torch module with gradients). `loader_for(dataset)`: the `chanaxis.data.loader.Loader` to read the
    calibration images through (default: one of `workers` processes made for this pass, closed after it)."""
    if not has_gradients(model):
        return None
    n = geometry_images(grp, p)
    accs = _accumulate(run, grp, layers, model, 0, n, bar, loader_for, workers)
    return {l: accs[l].grad_cos() for l in layers}


def geometry_partial(run, grp, layers, model, lo: int, hi: int, loader_for=None,
                     workers: int | None = None) -> dict[str, np.ndarray]:
    """The float64 sums (`_Acc.state`) of every layer over calibration images lo:hi (a multiple of FORWARD_BATCH
    for `lo`, so the forward passes are those of the whole pass)."""
    if lo % FORWARD_BATCH:
        raise ValueError(f"a geometry batch starts at a multiple of {FORWARD_BATCH} images, not {lo}")
    accs = _accumulate(run, grp, layers, model, lo, hi, None, loader_for, workers)
    return {l: accs[l].state() for l in layers}


def reduce_sums(grp, layers, partials) -> dict[str, np.ndarray]:
    """Per-layer grad_cos from the sums of every batch (`geometry_partial`'s results, added in the given order)."""
    out = {}
    for l in layers:
        acc = _Acc(_spec(grp, l), np.asarray(grp[store.layer_array(l, "weight")][...]))
        for part in partials:
            acc.merge(part[l])
        out[l] = acc.grad_cos()
    return out


class _spec:
    """What `_Acc` needs of a layer (groups, c_out), read from the store's /layers attrs (no model at hand)."""

    def __init__(self, grp, name):
        a = grp[store.layer_node(name)].attrs
        self.name, self.groups, self.c_out = name, int(a["groups"]), int(a["c_out"])


def _accumulate(run, grp, layers, model, start, n, bar, loader_for, workers):
    """The accumulators of every layer over calibration images start:n."""
    from .data.loader import Loader
    from .reload import dataset_from_store
    handle = dataset_from_store(run)
    idx = np.asarray(grp[store.samples_array("dataset_index")][...])
    margin = torch.as_tensor(np.asarray(grp[store.samples_array("margin")][...])[:n], dtype=torch.float32)
    graph = model.graph
    mods = dict(model.module.named_modules())
    accs = {l: _Acc(graph[l], np.asarray(grp[store.layer_array(l, "weight")][...])) for l in layers}
    pos = {l: torch.as_tensor(np.asarray(grp[store.layer_array(l, "position")][...]).reshape(len(idx), -1)[:n])
           for l in layers}
    state, pending = {}, {}
    handles = []
    for l in layers:
        def pre(mod, args, l=l):
            lo, hi = state["lo"], state["hi"]
            pending[l] = patches(mod, graph[l], args[0].detach(), pos[l][lo:hi].to(args[0].device))

        def post(mod, args, out, l=l):
            # the layer's own output at the same positions (a copy, taken before any in-place op downstream)
            lo, hi = state["lo"], state["hi"]
            p = pos[l][lo:hi].to(out.device)
            b, s = p.shape
            y = sample_positions(to_nchw(out, graph[l].layout), p).reshape(b * s, accs[l].g, accs[l].cpg)
            x = pending.pop(l)
            accs[l].add(x.cpu(), y.detach().float().cpu(), margin[lo:hi].repeat_interleave(s))
        handles.append(mods[l].register_forward_pre_hook(pre))
        handles.append(mods[l].register_forward_hook(post))
    task = bar.add_task("geometry", total=n - start) if bar is not None else None
    bs = FORWARD_BATCH
    loader = (loader_for or (lambda ds: Loader(ds, workers=workers, device=model.device)))(handle.dataset)
    try:
        model.module.eval()
        with torch.no_grad():
            for lo, (x, _) in zip(range(start, n, bs), loader.batches(idx[start:n], bs)):
                hi = min(n, lo + bs)
                state.update(lo=lo, hi=hi)
                model.module(x)
                if bar is not None:
                    bar.update(task, advance=hi - lo)
    finally:
        for h in handles:
            h.remove()
        if loader_for is None:
            loader.close()
    return accs
