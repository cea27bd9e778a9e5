"""What needs gradients: Taylor scores and fine-tuning a pruned copy with its masks held at zero."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..capabilities import require
from .masks import Effective, zero_pruned


def taylor_scores(model, x: torch.Tensor, y: torch.Tensor, layers: list[str], batch_size: int = 128) -> dict:
    """Σ|w ⊙ ∂L/∂w| per output channel, L the mean cross-entropy over the images (one accumulated gradient)."""
    require(model, "gradients", what="the taylor score (--methods taylor, --allocation taylor_hybrid)")
    net = model.module
    mods = dict(net.named_modules())
    net.zero_grad(set_to_none=True)
    for lo in range(0, len(x), batch_size):
        logits, _ = model.run(x[lo:lo + batch_size], grad=True)
        loss = F.cross_entropy(logits, y[lo:lo + batch_size].to(logits.device), reduction="sum") / len(x)
        loss.backward()
    out = {}
    for name in layers:
        w = mods[name].weight
        out[name] = (w.detach() * w.grad).abs().reshape(w.shape[0], -1).sum(1).double().cpu().numpy()
    net.zero_grad(set_to_none=True)
    return out


def finetune(model, eff: Effective, train_dataset, epochs: int, max_batches: int, lr: float, seed: int,
             batch_size: int) -> torch.nn.Module:
    """A pruned copy trained with Adam; pruned parameters (and the consumers' dead input slices) are zeroed after
    every step, so the pruned network stays exactly the masked one."""
    require(model, "gradients", what="fine-tuning (--finetune-epochs > 0; pass --finetune-epochs 0 for one-shot)")
    net = copy.deepcopy(model.module)
    zero_pruned(net, model.graph, eff)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    device = getattr(model, "device", "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the augmentation draws from torch's RNG
        order_rng = np.random.default_rng(seed)
        n = len(train_dataset)
        for _ in range(epochs):
            perm = order_rng.permutation(n)
            net.train()
            for b in range(min(max_batches, n // batch_size if n >= batch_size else 1)):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                items = [train_dataset[int(i)] for i in idx]
                xb = torch.stack([it[0] for it in items]).to(device)
                yb = torch.as_tensor([int(it[1]) for it in items], device=device)
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                zero_pruned(net, model.graph, eff)
    return net.eval()
