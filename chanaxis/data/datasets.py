"""The torch Datasets that ``load_dataset`` returns (in memory, image files, generated) and their DatasetHandle."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from chanaxis.errors import ChanaxisError

from .cards import Card
from .transforms import Pipeline

# what PIL raises on a corrupt, truncated or hostile file
_UNREADABLE = (OSError, ValueError, SyntaxError)


def _unreadable(path: str, e: Exception) -> ChanaxisError:
    return ChanaxisError(f"cannot read image {path} ({e}); remove or replace the file")


class ArrayDataset(Dataset):
    """Decoded uint8 images N x C x H x W held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Pipeline):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(torch.from_numpy(np.array(self.images[i]))), int(self.labels[i])


def read_image(path: str) -> torch.Tensor:
    """The image file as a uint8 3 x H x W tensor."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (*_UNREADABLE, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def verify_image(path: str) -> None:
    """Fail with the file's name unless it decodes completely."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the image unusable and misses truncation: decode it too
            im.load()
    except (*_UNREADABLE, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


class FileDataset(Dataset):
    """Image files decoded on access."""

    def __init__(self, files: list[str], labels: np.ndarray, transform: Pipeline):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.files[i])), int(self.labels[i])


class SyntheticDataset(Dataset):
    """Generated images: class template (fixed by seed) shifted, contrast-scaled and noised, per index.

    Each item comes from ``np.random.default_rng([seed, split_id, index])``, so nothing is held in memory.
    """

    def __init__(self, n: int, seed: int, split_id: int, num_classes: int, size: int, params: dict, transform):
        self.n, self.seed, self.split_id, self.num_classes, self.size = n, seed, split_id, num_classes, size
        self.p, self.transform = params, transform
        self.labels = np.arange(n, dtype=np.int64) % num_classes
        g = int(params.get("template_grid", 4))
        coarse = np.random.default_rng([seed, 1_000_003]).standard_normal((num_classes, 3, g, g)).astype(np.float32)
        up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                             align_corners=False).numpy()
        up -= up.mean(axis=(1, 2, 3), keepdims=True)
        self.templates = up / up.std(axis=(1, 2, 3), keepdims=True)

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> np.ndarray:
        """The uint8 3 x H x W image of index i."""
        p = self.p
        rng = np.random.default_rng([self.seed, self.split_id, i])
        s = int(p.get("max_shift", 8))
        dy, dx = rng.integers(-s, s + 1, size=2)
        lo, hi = p.get("contrast", [0.6, 1.4])
        contrast = rng.uniform(lo, hi)
        bright = rng.uniform(-1, 1) * p.get("brightness", 0.08)
        t = np.roll(self.templates[self.labels[i]], (int(dy), int(dx)), axis=(1, 2))
        x = 0.5 + bright + p.get("amplitude", 0.1) * contrast * t
        x = x + p.get("noise", 0.3) * rng.standard_normal(t.shape)
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.transform(torch.from_numpy(self.image(i))), int(self.labels[i])


@dataclasses.dataclass
class DatasetHandle:
    dataset: Dataset
    card: Card
    num_classes: int
    image_size: int
    split: str
    root: str | None
    name: str
    classes: list[str]
    targets: np.ndarray                      # labels of every item, without decoding
    transform: str = "eval"
    missing_classes: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)
