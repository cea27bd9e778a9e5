"""Where capture and the geometry pass look: seeded spatial positions, and the C-vectors of an output there."""
from __future__ import annotations

import numpy as np
import torch


def spatial_positions(n_images: int, hw: int, spatial_samples: int, seed: int, depth: int) -> np.ndarray:
    """Flat spatial positions sampled per image: uniform with replacement, or all when H·W ≤ spatial_samples."""
    if hw <= spatial_samples:
        return np.broadcast_to(np.arange(hw), (n_images, hw)).copy()
    return np.random.default_rng([seed, depth]).integers(0, hw, size=(n_images, spatial_samples))


def sample_positions(t: torch.Tensor, pos: torch.Tensor, with_mean: bool = False):
    """The C-vectors of `t` (the NCHW view of a layer's output) at flat positions `pos` (image × sample), as
    (image·sample, C), plus the per-image mean when asked. Read in the output's own memory layout (NCHW, or
    channels-last as ConvNeXt's MLP and channels_last models give it), so no full-size copy is made. Advanced
    indexing copies at once, so later in-place ops (ReLU, residual +=) cannot reach the samples."""
    b, c = t.shape[:2]
    rows = torch.arange(b, device=pos.device)[:, None]
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        flat = t.permute(0, 2, 3, 1).reshape(b, -1, c)   # a view: (image, position, channel)
        local, dim = flat[rows, pos], 1
    else:
        flat = t.reshape(b, c, -1)                        # (image, channel, position)
        local, dim = flat[rows, :, pos], 2
    local = local.reshape(-1, c)
    return (local, flat.mean(dim, dtype=torch.float32)) if with_mean else local


def reducer(pos: torch.Tensor):
    """The capture hook's reduction: sampled C-vectors and per-image means (`sample_positions`)."""
    return lambda t: sample_positions(t, pos, with_mean=True)
