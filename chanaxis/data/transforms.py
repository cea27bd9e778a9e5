"""The per-item transform: the card's eval or train augmentation, then normalisation with the card's mean/std."""

from __future__ import annotations

import torch

from chanaxis.errors import ChanaxisError

from .cards import Card


class EnsureSize:
    """Resize to size x size unless already there."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        from torchvision.transforms.v2 import functional as F
        return F.resize(x, [self.size, self.size], antialias=True)


class Pipeline:
    """uint8 CxHxW tensor -> (ops) -> float normalised 3xHxW tensor. Picklable for DataLoader workers."""

    def __init__(self, ops: list, mean, std, deterministic: bool = True):
        self.ops, self.deterministic = ops, deterministic
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1).contiguous()
        for op in self.ops:
            x = op(x)
        if self.mean.device != x.device:  # decoded on the GPU (chanaxis.data.loader)
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std


def build_transform(card: Card, mode: str, size: int) -> Pipeline:
    """``mode`` "eval": deterministic resize / centre-crop as the card says; "train": the card's augmentation."""
    from torchvision.transforms import v2

    aug = card.augment
    ops: list = []
    if mode == "eval":
        if aug.get("eval_resize"):
            ops += [v2.Resize(round(aug["eval_resize"] * size / aug["eval_center_crop"]), antialias=True),
                    v2.CenterCrop(size)]
        else:
            ops.append(EnsureSize(size))
    elif mode == "train":
        if aug.get("random_resized_crop"):
            ops.append(v2.RandomResizedCrop(size, antialias=True))
        else:
            ops.append(EnsureSize(size))
            pad = round(aug.get("crop_padding", 0) * size / card.image_size)  # the card's padding is at its own size
            if pad:
                ops.append(v2.RandomCrop(size, padding=pad))
        if aug.get("flip"):
            ops.append(v2.RandomHorizontalFlip())
        if aug.get("rotation"):
            ops.append(v2.RandomRotation(aug["rotation"]))
        if aug.get("color_jitter"):
            ops.append(v2.ColorJitter(*aug["color_jitter"]))
    else:
        raise ChanaxisError(f"unknown transform {mode!r}; use 'eval' or 'train'")
    return Pipeline(ops, card.mean, card.std, deterministic=mode == "eval")
