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


_FAST = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG: decoded by torchvision.io (libjpeg-turbo, libpng)


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a uint8 tensor (what a device decoder takes)."""
    try:
        with open(path, "rb") as f:
            return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    except OSError as e:
        raise _unreadable(path, e) from None


def decode(data: torch.Tensor, path: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """Encoded image bytes → uint8 3 x H x W RGB tensor.

    JPEG and PNG go through torchvision.io's decoders (on the GPU for JPEG when `device` is CUDA); pixels equal
    PIL's (both use libjpeg-turbo with the same IDCT and chroma upsampling: tests/test_loader.py checks equality on
    CPU). Anything else — and any file torchvision declines (CMYK JPEG, 16-bit PNG, …) — falls back to PIL."""
    head = bytes(data[:8].tolist())
    if head.startswith(_FAST):
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        try:
            if head.startswith(_FAST[0]) and str(device).startswith("cuda"):
                img = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            else:
                img = decode_image(data, mode=ImageReadMode.RGB)
            if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
                return img
        except RuntimeError:
            pass  # PIL decides: it reads more variants, and it names what is wrong with a damaged file
    return _pil_decode(data, path).to(device)


def _pil_decode(data: torch.Tensor, path: str) -> torch.Tensor:
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
    except (*_UNREADABLE, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_image(path: str) -> torch.Tensor:
    """The image file as a uint8 3 x H x W tensor."""
    return decode(read_bytes(path), path)


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

    def encoded(self, i: int):
        """Item `i` undecoded: (file bytes, label), for a decoder on the device (`chanaxis.data.loader`)."""
        return read_bytes(self.files[i]), int(self.labels[i])


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
