"""What needs gradients: Taylor scores and fine-tuning a pruned copy with its masks held at zero."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .. import precision as prec
from ..capabilities import require
from ..data.loader import item_seeds
from .masks import Effective, PrunedZeros


def taylor_scores(model, x: torch.Tensor, y: torch.Tensor, layers: list[str], batch_size: int = 128,
                  step=None) -> dict:
    """Σ|w ⊙ ∂L/∂w| per output channel, L the mean cross-entropy over the images (one accumulated gradient);
    `step(n)` (optional) is told the images of each batch done."""
    require(model, "gradients", what="the taylor score (--methods taylor, --allocation taylor_hybrid)")
    net = model.module
    mods = dict(net.named_modules())
    net.zero_grad(set_to_none=True)
    for lo in range(0, len(x), batch_size):
        logits, _ = model.run(x[lo:lo + batch_size], grad=True)
        loss = F.cross_entropy(logits, y[lo:lo + batch_size].to(logits.device), reduction="sum") / len(x)
        loss.backward()
        if step is not None:
            step(len(x[lo:lo + batch_size]))
    out = {}
    for name in layers:
        w = mods[name].weight
        out[name] = (w.detach() * w.grad).abs().reshape(w.shape[0], -1).sum(1).double().cpu().numpy()
    net.zero_grad(set_to_none=True)
    return out


def finetune(model, eff: Effective, loader, epochs: int, max_batches: int, lr: float, seed: int,
             batch_size: int, precision: str = "fp32", steps=None) -> torch.nn.Module:
    """A pruned copy trained with Adam on the training images of `loader` (a `chanaxis.data.loader.Loader`, whose
    augmentation is seeded per item); pruned parameters (and the consumers' dead input slices) are zeroed after
    every step, so the pruned network stays exactly the masked one. `precision`: "fp32" or "bf16" (autocast, with
    channels_last on CUDA). `steps(n)`, when given, is called once with the number of training steps and returns a
    function called after each step (a progress bar's tick: `chanaxis.stage.Context.steps`)."""
    require(model, "gradients", what="fine-tuning (--finetune-epochs > 0; pass --finetune-epochs 0 for one-shot)")
    device = getattr(model, "device", "cpu")
    net = prec.to_device_layout(copy.deepcopy(model.module), device)
    zero = PrunedZeros(net, model.graph, eff)  # the indices once; each step only writes the zeros
    zero()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws from torch's RNG; the augmentation is seeded per item
        order_rng = np.random.default_rng(seed)
        n = len(loader.dataset)
        n_batches = min(max_batches, n // batch_size if n >= batch_size else 1)
        tick = steps(epochs * n_batches) if steps is not None else None
        for epoch in range(epochs):
            order = order_rng.permutation(n)[:n_batches * batch_size]
            net.train()
            for xb, yb in loader.batches(order, batch_size, seeds=item_seeds(seed, epoch, len(order))):
                with prec.autocast(precision, device):
                    loss = F.cross_entropy(net(prec.input_layout(xb, device)).float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                zero()
                if tick is not None:
                    tick()
    return net.eval()
