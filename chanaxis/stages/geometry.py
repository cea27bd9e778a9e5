"""Gradient geometry (METHOD §4) from one extra forward pass over calibration images.

Why a dedicated pass rather than accumulating at capture: it needs the layers' *input* patches, whose covariance is
d×d per layer (d = k²·C_in, up to 4 608 in VGG-16): carrying that through capture would cost more than the capture
itself and break its streaming budget. We never form Σ_X: since Y_i = w_iᵀx + b exactly, Σ_X w_i = Cov(x, Y_i),
accumulated as Σ x·(Wx)ᵀ per group — n·d·C work instead of n·d² — on the same sampled positions as the store, with
T read from the store (the margin of each calibration image).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..estimators.structure import grad_cos_vectors


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

    def add(self, x, t):
        """x: (n, g, d) patches; t: (n,) target of each patch's image. METHOD: sums in float64."""
        x, t = x.double(), t.double()
        y = torch.einsum("ngd,gcd->ngc", x, self.w)
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


def _patches(module, layer, inp: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Input patches at the sampled output positions: (B·s, groups, d_g)."""
    b = inp.shape[0]
    if layer.kind == "linear":  # channels-last pointwise: the patch is the input vector itself
        flat = inp.reshape(b, -1, inp.shape[-1])
        x = flat.gather(1, pos[:, :, None].expand(-1, -1, flat.shape[2]))
        return x.reshape(-1, 1, flat.shape[2]).float()
    cols = F.unfold(inp.float(), module.kernel_size, dilation=module.dilation, padding=module.padding,
                    stride=module.stride)  # (B, C_in·kh·kw, L)
    x = cols.gather(2, pos[:, None, :].expand(-1, cols.shape[1], -1)).permute(0, 2, 1)
    return x.reshape(-1, layer.groups, cols.shape[1] // layer.groups)


def geometry_pass(run, grp, layers, p, model, bar):
    """Per-channel grad_cos for every layer, or None when the model cannot run it (no torch module)."""
    from ..reload import dataset_from_store, model_from_store
    if model is None:
        try:
            model = model_from_store(run)
        except Exception:  # noqa: BLE001 - geometry is optional; the reason is recorded in the attrs
            return None
    if "gradients" not in getattr(model, "capabilities", ()) or not hasattr(model, "module"):
        return None
    handle = dataset_from_store(run)
    idx = np.asarray(grp["samples/dataset_index"][...])
    n = min(len(idx), int(p["geometry_images"]))
    margin = torch.as_tensor(np.asarray(grp["samples/margin"][...])[:n], dtype=torch.float32)
    graph = model.graph
    mods = dict(model.module.named_modules())
    accs = {l: _Acc(graph[l], np.asarray(grp[f"layers/{l}/weight"][...])) for l in layers}
    pos = {l: torch.as_tensor(np.asarray(grp[f"layers/{l}/position"][...]).reshape(len(idx), -1)[:n])
           for l in layers}
    state = {}
    handles = []
    for l in layers:
        def pre(mod, args, l=l):
            lo, hi = state["lo"], state["hi"]
            x = _patches(mod, graph[l], args[0].detach(), pos[l][lo:hi].to(args[0].device)).cpu()
            s = pos[l].shape[1]
            accs[l].add(x.reshape(-1, x.shape[1], x.shape[2]), margin[lo:hi].repeat_interleave(s))
        handles.append(mods[l].register_forward_pre_hook(pre))
    task = bar.add_task("geometry", total=n)
    bs = 64
    try:
        model.module.eval()
        with torch.no_grad():
            for lo in range(0, n, bs):
                hi = min(n, lo + bs)
                x = torch.stack([handle.dataset[int(i)][0] for i in idx[lo:hi]]).to(model.device)
                state.update(lo=lo, hi=hi)
                model.module(x)
                bar.update(task, advance=hi - lo)
    finally:
        for h in handles:
            h.remove()
    return {l: accs[l].grad_cos() for l in layers}
