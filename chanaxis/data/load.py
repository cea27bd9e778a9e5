"""``load_dataset``: a card's split as ``(float 3xHxW tensor, int label)`` items, through its format's reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chanaxis.errors import ChanaxisError

from .cards import Card, get_card
from .datasets import DatasetHandle
from .locate import locate_or_download
from .registry import get_reader
from .transforms import build_transform


def _resolve_split(card: Card, split: str) -> str:
    if split in card.splits:
        return split
    if split in ("val", "test", "eval"):
        return card.eval_split
    raise ChanaxisError(f"{card.name} has no split {split!r}; use one of: {', '.join(card.splits)}")


def load_dataset(name_or_path: str | os.PathLike, split: str = "train", root: str | os.PathLike | None = None,
                 transform: str = "eval", image_size: int | None = None, download: bool = False, *,
                 seed: int | None = None, verify: bool = False) -> DatasetHandle:
    """A dataset by card name (or ImageFolder directory), as ``(3xHxW float tensor, int label)`` items.

    transform: "eval" (deterministic: resize / centre-crop as the card says) or "train" (the card's augmentation).
    image_size: model input size (default: the card's). seed: the synthetic card's generator seed (default: card's).
    verify: decode every image file up front (file-based formats) and fail on the first unreadable one.
    """
    card = get_card(name_or_path, image_size=image_size)
    split = _resolve_split(card, split)
    size = int(image_size or card.image_size)
    tf = build_transform(card, transform, size)
    reader = get_reader(card)
    data_root: Path | None = None if reader.where is not None else locate_or_download(card, root, download)
    got = reader.read(card, data_root, split, tf, seed=seed, verify=verify)
    data_root = got.root if got.root is not None else data_root
    labels = got.labels

    classes = list(got.classes) if got.classes else [str(k) for k in range(card.num_classes)]
    if labels.size and (labels.min() < 0 or labels.max() >= card.num_classes):
        raise ChanaxisError(f"{card.name}: labels outside 0..{card.num_classes - 1} in {data_root}; the files do not "
                            f"match the card")
    return DatasetHandle(dataset=got.dataset, card=card, num_classes=card.num_classes, image_size=size, split=split,
                         root=str(data_root) if data_root is not None else None, name=card.name, classes=classes,
                         targets=np.asarray(labels, dtype=np.int64), transform=transform,
                         missing_classes=got.missing_classes)
