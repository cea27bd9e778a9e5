"""The one loss/accuracy evaluator: training, lesions, pruning and fine-tuning all measure through it."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ChanaxisError


def _per_image(logits, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).float()
    if logits.ndim == 2:
        logits = logits[None]
    k, n, c = logits.shape
    yy = y.to(logits.device).repeat(k)
    ce = F.cross_entropy(logits.reshape(-1, c), yy, reduction="none").reshape(k, n)
    return ce, logits.argmax(-1) == yy.reshape(k, n)


def outcome_sums(logits, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-variant sums over images of cross-entropy (nats) and correct predictions; logits N×classes or
    K×N×classes (K variants of the same images), summed in float64."""
    ce, correct = _per_image(logits, y)
    return ce.sum(1).double().cpu().numpy(), correct.float().sum(1).double().cpu().numpy()


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """(x, y) in consecutive batches of `batch_size` images."""
    for lo in range(0, len(x), batch_size):
        yield x[lo:lo + batch_size], y[lo:lo + batch_size]


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (%) of `forward` (images → logits) over `batches` of (x, y)."""
    ce = ok = 0.0
    n = 0
    for x, y in batches:
        c, a = outcome_sums(forward(x), y)
        ce, ok, n = ce + c[0], ok + a[0], n + len(y)
    if n == 0:
        raise ChanaxisError("no evaluation images: the evaluation split or subset is empty")
    return ce / n, 100.0 * ok / n


@torch.no_grad()
def evaluate_images(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable):
    """`evaluate`'s mean loss and accuracy (the same values, summed the same way) plus the per-image outcomes behind
    them: (loss, acc %, per-image cross-entropy float32 nats, per-image correctness bool), so that
    acc == 100 · correct.sum() / len(correct) exactly."""
    ce_sum = ok = 0.0
    ces, oks = [], []
    for x, y in batches:
        ce, correct = _per_image(forward(x), y)
        ce_sum, ok = ce_sum + float(ce.sum(1).double()[0]), ok + float(correct.float().sum(1).double()[0])
        ces.append(ce[0].cpu().numpy().astype(np.float32))
        oks.append(correct[0].cpu().numpy().astype(bool))
    if not ces:
        raise ChanaxisError("no evaluation images: the evaluation split or subset is empty")
    loss_img, correct_img = np.concatenate(ces), np.concatenate(oks)
    n = len(correct_img)
    return ce_sum / n, 100.0 * ok / n, loss_img, correct_img


def model_forward(model, masks=None) -> Callable:
    """A `Model`'s logits under `masks` (lesions, pruning)."""
    return lambda x: model.run(x, masks=masks)[0]


def module_forward(net: torch.nn.Module, device="cpu") -> Callable:
    """A plain module's logits, in eval mode, on `device`."""
    net.eval()
    return lambda x: net(x.to(device))
