"""Data cards -> torch datasets, and the fixed calibration indices.

A card (``data_cards/<name>.toml``) says what a dataset is (classes, image size, mean/std, splits), how it lies on disk
(``format`` + ``[layout]``), where to look for it, how to get it, how to augment it and how to train on it.
``load_dataset`` reads every format from its real on-disk layout and yields ``(float 3xHxW tensor, int label)`` pairs
normalised with the card's mean/std. Any existing directory that is not a card name is read as an ImageFolder.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import gzip
import hashlib
import importlib.resources
import os
import pickle
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from chanaxis.errors import ChanaxisError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_BUILTIN_FORMATS = ("sklearn-digits", "synthetic")

__all__ = [
    "Card", "DatasetHandle", "Availability", "list_cards", "get_card", "locate", "availability", "load_dataset",
    "calibration_indices", "indices_sha256",
]


# ----------------------------------------------------------------------------------------------------------- cards

@dataclasses.dataclass(frozen=True)
class Card:
    name: str
    description: str
    format: str
    num_classes: int
    classes: tuple[str, ...] | None  # None: read from the data
    image_size: int                  # model input size
    source_size: int | None          # stored image size (None: varies per file)
    channels: int                    # channels of the source; greyscale is replicated to 3
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: tuple[str, ...]
    download: bool                   # torchvision can download it
    how_to_get: str
    search: tuple[str, ...]
    layout: dict[str, Any]
    augment: dict[str, Any]
    recipe: dict[str, Any]
    raw: dict[str, Any] = dataclasses.field(repr=False, compare=False)
    path: str | None = None          # the card file, or the ImageFolder directory

    @property
    def eval_split(self) -> str:
        return next(s for s in self.splits if s != "train") if len(self.splits) > 1 else self.splits[0]

    def recipe_for(self, model: str | None = None) -> dict[str, Any]:
        """The training recipe with the learning rate resolved for ``model`` (``lr_by_model`` glob patterns)."""
        out = {k: v for k, v in self.recipe.items() if k != "lr_by_model"}
        for pattern, lr in self.recipe.get("lr_by_model", {}).items():
            if model and fnmatch.fnmatch(model.lower(), pattern.lower()):
                out["lr"] = lr
                break
        return out


def _card_from_dict(d: dict[str, Any], path: str | None) -> Card:
    try:
        classes = d.get("classes")
        return Card(
            name=d["name"], description=d.get("description", ""), format=d["format"],
            num_classes=int(d["num_classes"]), classes=tuple(classes) if classes else None,
            image_size=int(d["image_size"]), source_size=d.get("source_size"), channels=int(d.get("channels", 3)),
            mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]),
            splits=tuple(d["splits"]), download=bool(d.get("download", False)), how_to_get=d.get("how_to_get", ""),
            search=tuple(d.get("search", ())), layout=dict(d.get("layout", {})), augment=dict(d.get("augment", {})),
            recipe=dict(d.get("recipe", {})), raw=d, path=path,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ChanaxisError(f"data card {path} is malformed ({e!r}); fix the card file") from None


@functools.lru_cache(maxsize=1)
def _cards() -> dict[str, Card]:
    out = {}
    for f in importlib.resources.files("chanaxis.data_cards").iterdir():
        if f.name.endswith(".toml"):
            card = _card_from_dict(tomllib.loads(f.read_text(encoding="utf-8")), str(f))
            out[card.name] = card
    return out


def _package_text(name: str) -> str:
    return importlib.resources.files("chanaxis.data_cards").joinpath(name).read_text(encoding="utf-8")


def list_cards() -> list[Card]:
    return sorted(_cards().values(), key=lambda c: c.name)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_card(name: str | os.PathLike, image_size: int | None = None) -> Card:
    """The card called ``name`` (case, '-' and '_' ignored), or an ImageFolder card for an existing directory."""
    cards = _cards()
    key = str(name)
    by_squash = {_squash(n): c for n, c in cards.items()}
    if _squash(key) in by_squash and os.sep not in key:
        return by_squash[_squash(key)]
    p = Path(key).expanduser()
    if p.is_dir():
        return _imagefolder_card(p, image_size)
    if os.sep in key or key.startswith((".", "~")):
        raise ChanaxisError(f"dataset directory {p} does not exist; give an existing ImageFolder directory or one of: "
                            f"{', '.join(sorted(cards))}")
    near = difflib.get_close_matches(key.lower(), list(cards), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
    raise ChanaxisError(f"unknown dataset {key!r}; {hint}valid names: {', '.join(sorted(cards))}, "
                        f"or the path of an ImageFolder directory")


# ------------------------------------------------------------------------------------------------------- locating

def _candidates(card: Card, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        r = Path(root).expanduser()
        out = [r, r / card.name]
    else:
        out = []
        for s in card.search:
            if "$CHANAXIS_DATA" in s and not os.environ.get("CHANAXIS_DATA"):
                continue
            out.append(Path(os.path.expandvars(s)).expanduser())
    return list(dict.fromkeys(out))


def _probe(card: Card, base: Path) -> Path | None:
    """The data directory of ``card`` under ``base``, if it is there."""
    fmt, lay = card.format, card.layout
    if fmt == "cifar-pickle":
        for d in (base / lay["folder"], base):
            if (d / lay["train"][0]).is_file() or (d / lay["test"][0]).is_file():
                return d
    elif fmt == "tiny-imagenet-tree":
        for d in (base / lay["folder"], base):
            if (d / lay["wnids"]).is_file():
                return d
    elif fmt == "idx-gz":
        for sub in lay["subfolders"]:
            d = base / sub if sub else base
            if any(_idx_file(d, lay[k]) for k in ("train_images", "test_images")):
                return d
    elif fmt == "imagefolder-subset":
        wnids = _imagenet100_wnids()
        for split in card.splits:
            if (base / split).is_dir() and any((base / split / w).is_dir() for w in wnids):
                return base
    elif fmt == "imagefolder":
        return base if base.is_dir() else None
    return None


def _what_is_looked_for(card: Card) -> str:
    lay = card.layout
    return {
        "cifar-pickle": f"{lay.get('folder')}/{lay.get('train', [''])[0]}",
        "tiny-imagenet-tree": f"{lay.get('folder')}/{lay.get('wnids')}",
        "idx-gz": f"{lay.get('train_images')}",
        "imagefolder-subset": "train/<wnid>/ or val/<wnid>/ folders",
    }.get(card.format, "the data")


def locate(card: Card | str, root: str | os.PathLike | None = None) -> Path | None:
    """Where the card's data lies on this machine (None if not found; None also for built-in datasets)."""
    card = card if isinstance(card, Card) else get_card(card)
    for base in _candidates(card, root):
        found = _probe(card, base)
        if found is not None:
            return found
    return None


@dataclasses.dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    where: str | None
    how_to_get: str


def availability(root: str | os.PathLike | None = None) -> list[Availability]:
    """For each card: is it usable on this machine, and from where."""
    out = []
    for card in list_cards():
        if card.format == "sklearn-digits":
            out.append(Availability(card.name, True, "bundled with scikit-learn", card.how_to_get))
        elif card.format == "synthetic":
            out.append(Availability(card.name, True, "generated on the fly", card.how_to_get))
        else:
            p = locate(card, root)
            out.append(Availability(card.name, p is not None, str(p) if p else None, card.how_to_get))
    return out


def _missing(card: Card, root, tried: list[Path], extra: str = "") -> ChanaxisError:
    tried_s = ", ".join(str(t) for t in tried) or "(no location: set CHANAXIS_DATA or pass a root)"
    return ChanaxisError(f"{card.name} not found{extra}: looked for {_what_is_looked_for(card)} in {tried_s}; "
                         f"to get it: {card.how_to_get}")


# ------------------------------------------------------------------------------------------------------ transforms

class _EnsureSize:
    """Resize to size x size unless already there."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        from torchvision.transforms.v2 import functional as F
        return F.resize(x, [self.size, self.size], antialias=True)


class _Pipeline:
    """uint8 CxHxW tensor -> (ops) -> float normalised 3xHxW tensor. Picklable for DataLoader workers."""

    def __init__(self, ops: list, mean, std):
        self.ops = ops
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1).contiguous()
        for op in self.ops:
            x = op(x)
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std


def _build_transform(card: Card, mode: str, size: int) -> _Pipeline:
    from torchvision.transforms import v2

    aug = card.augment
    ops: list = []
    if mode == "eval":
        if aug.get("eval_resize"):
            ops += [v2.Resize(round(aug["eval_resize"] * size / aug["eval_center_crop"]), antialias=True),
                    v2.CenterCrop(size)]
        else:
            ops.append(_EnsureSize(size))
    elif mode == "train":
        if aug.get("random_resized_crop"):
            ops.append(v2.RandomResizedCrop(size, antialias=True))
        else:
            ops.append(_EnsureSize(size))
            pad = round(aug.get("crop_padding", 0) * size / card.image_size)
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
    return _Pipeline(ops, card.mean, card.std)


# -------------------------------------------------------------------------------------------------------- datasets

class ArrayDataset(Dataset):
    """Decoded uint8 images N x C x H x W held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: _Pipeline):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(torch.from_numpy(np.array(self.images[i]))), int(self.labels[i])


def _read_image(path: str) -> torch.Tensor:
    from PIL import Image
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ChanaxisError(f"cannot read image {path} ({e}); remove or replace the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _verify_image(path: str) -> None:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ChanaxisError(f"cannot read image {path} ({e}); remove or replace the file") from None


class FileDataset(Dataset):
    """Image files decoded on access."""

    def __init__(self, files: list[str], labels: np.ndarray, transform: _Pipeline):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(_read_image(self.files[i])), int(self.labels[i])


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


# --------------------------------------------------------------------------------------------------------- readers

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


@functools.lru_cache(maxsize=4)
def _read_cifar(folder: str, files: tuple[str, ...], label_key: str, _mtime: float):
    data, labels = [], []
    for name in files:
        d = _unpickle(Path(folder) / name)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[label_key])
    images, y = np.concatenate(data), np.asarray(labels, dtype=np.int64)
    images.setflags(write=False)
    return images, y


def _load_cifar(card: Card, d: Path, split: str):
    lay = card.layout
    files = tuple(lay[split])
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise ChanaxisError(f"{card.name}: {', '.join(str(d / f) for f in missing)} missing; to get it: {card.how_to_get}")
    try:
        images, labels = _read_cifar(str(d), files, lay["label_key"], max((d / f).stat().st_mtime for f in files))
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
        raise ChanaxisError(f"{card.name}: cannot read {d} as CIFAR pickles ({e!r}); re-download the files") from None
    classes = list(card.classes) if card.classes else None
    if classes is None and (d / lay["meta"]).is_file():
        names = _unpickle(d / lay["meta"]).get(lay["names_key"])
        if names:
            classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    return images, labels, classes


def _idx_file(d: Path, name: str) -> Path | None:
    stem = name[:-3] if name.endswith(".gz") else name
    for cand in (d / (stem + ".gz"), d / stem):
        if cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=4)
def _read_idx(path: str, _mtime: float) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        magic = int.from_bytes(raw[0:4], "big")
        if magic >> 8 != 0x08:  # 0x08: unsigned byte
            raise ValueError(f"magic {magic:#x} is not an unsigned-byte IDX file")
        ndim = magic & 0xFF
        shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError) as e:
        raise ChanaxisError(f"cannot read IDX file {path} ({e}); re-download it") from None
    return arr


def _load_idx(card: Card, d: Path, split: str):
    lay = card.layout
    paths = [_idx_file(d, lay[f"{split}_{k}"]) for k in ("images", "labels")]
    if None in paths:
        raise ChanaxisError(f"{card.name}: {lay[f'{split}_images']} or {lay[f'{split}_labels']} missing in {d}; "
                            f"to get it: {card.how_to_get}")
    images, labels = (_read_idx(str(p), p.stat().st_mtime) for p in paths)
    if images.ndim != 3 or len(images) != len(labels):
        raise ChanaxisError(f"{card.name}: {paths[0]} and {paths[1]} do not match (shapes {images.shape}, "
                            f"{labels.shape}); re-download them")
    return images[:, None], labels.astype(np.int64), list(card.classes) if card.classes else None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    images.setflags(write=False)
    return images, d.target.astype(np.int64)


def _load_digits(card: Card, split: str):
    images, labels = _digits_arrays()
    n = len(labels)
    perm = np.random.default_rng(card.layout.get("split_seed", 0)).permutation(n)
    n_test = int(round(n * card.layout.get("test_fraction", 0.2)))
    idx = np.sort(perm[n_test:] if split == "train" else perm[:n_test])
    return images[idx], labels[idx], list(card.classes)


def _list_images(d: Path) -> list[str]:
    return sorted(str(p) for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@functools.lru_cache(maxsize=1)
def _imagenet100_wnids() -> tuple[str, ...]:
    return tuple(w.strip() for w in _package_text("imagenet100_wnids.txt").split() if w.strip())


def _load_tiny(card: Card, d: Path, split: str):
    lay = card.layout
    wnids = sorted(w.strip() for w in (d / lay["wnids"]).read_text().split() if w.strip())
    index = {w: k for k, w in enumerate(wnids)}
    files, labels = [], []
    if split == "train":
        for w in wnids:
            folder = d / "train" / w / "images"
            if not folder.is_dir():
                raise ChanaxisError(f"tiny-imagenet: {folder} missing; the tree looks incomplete, re-extract it "
                                    f"({card.how_to_get})")
            imgs = _list_images(folder)
            files += imgs
            labels += [index[w]] * len(imgs)
    else:
        ann = d / lay["val_annotations"]
        if not ann.is_file():
            raise ChanaxisError(f"tiny-imagenet: {ann} missing; re-extract the archive ({card.how_to_get})")
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in index:
                raise ChanaxisError(f"tiny-imagenet: {ann} names wnid {parts[1]!r} that is not in {d / lay['wnids']}")
            files.append(str(d / "val" / "images" / parts[0]))
            labels.append(index[parts[1]])
    return files, np.asarray(labels, dtype=np.int64), wnids


def _load_imagenet100(card: Card, d: Path, split: str):
    wnids = list(_imagenet100_wnids())
    base = d / split
    if not base.is_dir():
        raise ChanaxisError(f"imagenet100: split folder {base} missing (expected {split}/<wnid>/*.JPEG); "
                            f"to get it: {card.how_to_get}")
    files, labels, missing = [], [], []
    for k, w in enumerate(wnids):  # class index = position in imagenet100_wnids.txt
        if not (base / w).is_dir():
            missing.append(w)
            continue
        imgs = _list_images(base / w)
        files += imgs
        labels += [k] * len(imgs)
    if len(missing) == len(wnids):
        raise ChanaxisError(f"imagenet100: none of the 100 synsets found in {base}; to get it: {card.how_to_get}")
    if missing:
        warnings.warn(f"imagenet100: {len(missing)} of 100 synsets missing in {base} (e.g. {missing[0]}); "
                      f"loading the {100 - len(missing)} present, num_classes stays 100", stacklevel=3)
    return files, np.asarray(labels, dtype=np.int64), wnids, missing


# ---------------------------------------------------------------------------------------------------- ImageFolder

def _imagefolder_splits(root: Path) -> dict[str, Path]:
    """split name -> folder of class folders. A flat root/<class>/ layout serves as both train and eval."""
    out = {}
    if (root / "train").is_dir():
        out["train"] = root / "train"
        for name in ("val", "test"):
            if (root / name).is_dir():
                out[name] = root / name
                break
    else:
        out["train"] = root
    return out


def _class_dirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _imagefolder_card(root: Path, image_size: int | None) -> Card:
    splits = _imagefolder_splits(root)
    classes = _class_dirs(splits["train"])
    if not classes:
        raise ChanaxisError(f"{root} is not an ImageFolder dataset: no class folders in {splits['train']}; expected "
                            f"root/train/<class>/*.jpg (+ root/val/<class>/) or root/<class>/*.jpg")
    size = int(image_size or 224)
    imagenet = _cards().get("imagenet100")
    d = {
        "name": root.name, "format": "imagefolder",
        "description": f"ImageFolder dataset at {root}", "num_classes": len(classes), "classes": classes,
        "image_size": size, "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "splits": list(splits) if len(splits) > 1 else ["train"], "download": False,
        "how_to_get": f"the directory {root} given by the user", "search": [str(root)],
        "layout": {k: str(v) for k, v in splits.items()},
        "augment": dict(imagenet.augment) if imagenet else {"random_resized_crop": True, "flip": True},
        "recipe": dict(imagenet.recipe) if imagenet else {},
    }
    return _card_from_dict(d, str(root))


def _load_imagefolder(card: Card, split: str):
    d = Path(card.layout[split])
    classes = list(card.classes)
    files, labels = [], []
    for k, c in enumerate(classes):
        if not (d / c).is_dir():
            raise ChanaxisError(f"{card.path}: class folder {d / c} missing in split {split!r} (the train split has "
                                f"it); give every split the same class folders")
        imgs = _list_images(d / c)
        files += imgs
        labels += [k] * len(imgs)
    if not files:
        raise ChanaxisError(f"{d}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return files, np.asarray(labels, dtype=np.int64), classes


# ------------------------------------------------------------------------------------------------------- loading

def _resolve_split(card: Card, split: str) -> str:
    if split in card.splits:
        return split
    if split in ("val", "test", "eval"):
        return card.eval_split
    raise ChanaxisError(f"{card.name} has no split {split!r}; use one of: {', '.join(card.splits)}")


def _download(card: Card, root) -> Path:
    import torchvision.datasets as tvd
    target = Path(root).expanduser() if root is not None else (
        Path(os.environ["CHANAXIS_DATA"]) / card.name if os.environ.get("CHANAXIS_DATA")
        else Path("~/.cache/chanaxis").expanduser() / card.name)
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}[card.name]
    try:
        cls(root=str(target), train=True, download=True)
        cls(root=str(target), train=False, download=True)
    except Exception as e:  # network, disk, checksum: all user-facing
        raise ChanaxisError(f"downloading {card.name} into {target} failed ({e}); "
                            f"get it by hand: {card.how_to_get}") from None
    found = locate(card, target)
    if found is None:
        raise ChanaxisError(f"downloaded {card.name} into {target} but cannot find {_what_is_looked_for(card)} there")
    return found


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
    tf = _build_transform(card, transform, size)
    missing_classes: list[str] = []
    data_root: Path | None = None
    fmt = card.format

    if fmt not in _BUILTIN_FORMATS and fmt != "imagefolder":
        data_root = locate(card, root)
        if data_root is None:
            if download and card.download:
                data_root = _download(card, root)
            else:
                raise _missing(card, root, _candidates(card, root))

    if fmt == "cifar-pickle":
        images, labels, classes = _load_cifar(card, data_root, split)
        ds = ArrayDataset(images, labels, tf)
    elif fmt == "idx-gz":
        images, labels, classes = _load_idx(card, data_root, split)
        ds = ArrayDataset(images, labels, tf)
    elif fmt == "sklearn-digits":
        images, labels, classes = _load_digits(card, split)
        ds = ArrayDataset(images, labels, tf)
    elif fmt == "synthetic":
        lay = card.layout
        n = int(lay[f"{split}_size"])
        ds = SyntheticDataset(n, int(lay.get("seed", 0) if seed is None else seed), card.splits.index(split),
                              card.num_classes, int(card.source_size or card.image_size), lay, tf)
        labels, classes = ds.labels, list(card.classes)
    elif fmt in ("tiny-imagenet-tree", "imagefolder-subset", "imagefolder"):
        if fmt == "tiny-imagenet-tree":
            files, labels, classes = _load_tiny(card, data_root, split)
        elif fmt == "imagefolder-subset":
            files, labels, classes, missing_classes = _load_imagenet100(card, data_root, split)
        else:
            files, labels, classes = _load_imagefolder(card, split)
            data_root = Path(card.path)
        if verify:
            for f in files:
                _verify_image(f)
        ds = FileDataset(files, labels, tf)
    else:
        raise ChanaxisError(f"data card {card.name} has unknown format {fmt!r}; fix the card file")

    classes = list(classes) if classes else [str(k) for k in range(card.num_classes)]
    if labels.size and (labels.min() < 0 or labels.max() >= card.num_classes):
        raise ChanaxisError(f"{card.name}: labels outside 0..{card.num_classes - 1} in {data_root}; the files do not "
                            f"match the card")
    return DatasetHandle(dataset=ds, card=card, num_classes=card.num_classes, image_size=size, split=split,
                         root=str(data_root) if data_root is not None else None, name=card.name, classes=classes,
                         targets=np.asarray(labels, dtype=np.int64), transform=transform,
                         missing_classes=missing_classes)


# -------------------------------------------------------------------------------------------- calibration indices

def calibration_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """``np.random.default_rng(seed).choice(n_total, n, replace=False)``; n is capped at n_total (with a warning)."""
    if n > n_total:
        warnings.warn(f"asked for {n} calibration images but the split has only {n_total}; using all {n_total}",
                      stacklevel=2)
        n = n_total
    return np.random.default_rng(seed).choice(n_total, n, replace=False)


def indices_sha256(idx) -> str:
    """sha256 of the indices as little-endian int64 (stable across platforms and dtypes)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(idx, dtype="<i8")).tobytes()).hexdigest()
