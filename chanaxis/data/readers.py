"""The built-in readers, one per card ``format``, each reading its dataset's real on-disk layout."""

from __future__ import annotations

import functools
import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np

from chanaxis.errors import ChanaxisError

from .cards import Card, package_text
from .datasets import ArrayDataset, FileDataset, SyntheticDataset, verify_image
from .registry import Loaded, register_reader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------- CIFAR pickles

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")  # the originals are Python 2 pickles
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


@functools.lru_cache(maxsize=4)
def _read_cifar(folder: str, files: tuple[str, ...], label_key: str, _mtime: float):
    data, labels = [], []
    for name in files:
        d = _unpickle(Path(folder) / name)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[label_key])
    images, y = np.concatenate(data), np.asarray(labels, dtype=np.int64)
    images.setflags(write=False)  # shared by every handle through the cache
    return images, y


def _in_folder(card: Card, base: Path, *names: str) -> Path | None:
    """The card's folder under `base` (or `base` itself) when it holds any of the files `names`."""
    for d in (base / card.layout["folder"], base):
        if any((d / n).is_file() for n in names):
            return d
    return None


def _probe_cifar(card: Card, base: Path) -> Path | None:
    return _in_folder(card, base, card.layout["train"][0], card.layout["test"][0])


@register_reader("cifar-pickle", probe=_probe_cifar,
                 looked_for=lambda card: f"{card.layout.get('folder')}/{card.layout.get('train', [''])[0]}")
def read_cifar(card: Card, d: Path, split: str, transform, *, seed=None, verify=False) -> Loaded:
    lay = card.layout
    files = tuple(lay[split])
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise ChanaxisError(f"{card.name}: {', '.join(str(d / f) for f in missing)} missing; "
                            f"to get it: {card.how_to_get}")
    try:
        images, labels = _read_cifar(str(d), files, lay["label_key"], max((d / f).stat().st_mtime for f in files))
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
        raise ChanaxisError(f"{card.name}: cannot read {d} as CIFAR pickles ({e!r}); re-download the files") from None
    classes = list(card.classes) if card.classes else None
    if classes is None and (d / lay["meta"]).is_file():
        names = _unpickle(d / lay["meta"]).get(lay["names_key"])
        if names:
            classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    return Loaded(ArrayDataset(images, labels, transform), labels, classes)


# ------------------------------------------------------------------------------------------------- IDX (MNIST)

def _idx_file(d: Path, name: str) -> Path | None:
    stem = name[:-3] if name.endswith(".gz") else name
    for cand in (d / (stem + ".gz"), d / stem):  # torchvision leaves both the .gz and the unpacked file
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


def _probe_idx(card: Card, base: Path) -> Path | None:
    lay = card.layout
    for sub in lay["subfolders"]:
        d = base / sub if sub else base
        if any(_idx_file(d, lay[k]) for k in ("train_images", "test_images")):
            return d
    return None


@register_reader("idx-gz", probe=_probe_idx, looked_for=lambda card: f"{card.layout.get('train_images')}")
def read_idx(card: Card, d: Path, split: str, transform, *, seed=None, verify=False) -> Loaded:
    lay = card.layout
    paths = [_idx_file(d, lay[f"{split}_{k}"]) for k in ("images", "labels")]
    if None in paths:
        raise ChanaxisError(f"{card.name}: {lay[f'{split}_images']} or {lay[f'{split}_labels']} missing in {d}; "
                            f"to get it: {card.how_to_get}")
    images, labels = (_read_idx(str(p), p.stat().st_mtime) for p in paths)
    if images.ndim != 3 or len(images) != len(labels):
        raise ChanaxisError(f"{card.name}: {paths[0]} and {paths[1]} do not match (shapes {images.shape}, "
                            f"{labels.shape}); re-download them")
    labels = labels.astype(np.int64)
    return Loaded(ArrayDataset(images[:, None], labels, transform), labels,
                  list(card.classes) if card.classes else None)


# ----------------------------------------------------------------------------------------- digits and synthetic

@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    images.setflags(write=False)
    return images, d.target.astype(np.int64)


@register_reader("sklearn-digits", where="bundled with scikit-learn")
def read_digits(card: Card, root: None, split: str, transform, *, seed=None, verify=False) -> Loaded:
    images, labels = _digits_arrays()
    n = len(labels)
    perm = np.random.default_rng(card.layout.get("split_seed", 0)).permutation(n)
    n_test = int(round(n * card.layout.get("test_fraction", 0.2)))
    idx = np.sort(perm[n_test:] if split == "train" else perm[:n_test])
    labels = labels[idx]
    return Loaded(ArrayDataset(images[idx], labels, transform), labels, list(card.classes))


@register_reader("synthetic", where="generated on the fly")
def read_synthetic(card: Card, root: None, split: str, transform, *, seed=None, verify=False) -> Loaded:
    lay = card.layout
    ds = SyntheticDataset(int(lay[f"{split}_size"]), int(lay.get("seed", 0) if seed is None else seed),
                          card.splits.index(split), card.num_classes, int(card.source_size or card.image_size), lay,
                          transform)
    return Loaded(ds, ds.labels, list(card.classes))


# ------------------------------------------------------------------------------------------------ image folders

def _list_images(d: Path) -> list[str]:
    return sorted(str(p) for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _files(files: list[str], labels: list[int], transform, verify: bool) -> FileDataset:
    if verify:
        for f in files:
            verify_image(f)
    return FileDataset(files, np.asarray(labels, dtype=np.int64), transform)


def _probe_tiny(card: Card, base: Path) -> Path | None:
    return _in_folder(card, base, card.layout["wnids"])


@register_reader("tiny-imagenet-tree", probe=_probe_tiny,
                 looked_for=lambda card: f"{card.layout.get('folder')}/{card.layout.get('wnids')}")
def read_tiny(card: Card, d: Path, split: str, transform, *, seed=None, verify=False) -> Loaded:
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
    ds = _files(files, labels, transform, verify)
    return Loaded(ds, ds.labels, wnids)


@functools.lru_cache(maxsize=1)
def _imagenet100_wnids() -> tuple[str, ...]:
    return tuple(w.strip() for w in package_text("imagenet100_wnids.txt").split() if w.strip())


def _probe_imagenet100(card: Card, base: Path) -> Path | None:
    wnids = _imagenet100_wnids()
    for split in card.splits:
        if (base / split).is_dir() and any((base / split / w).is_dir() for w in wnids):
            return base
    return None


@register_reader("imagefolder-subset", probe=_probe_imagenet100,
                 looked_for=lambda card: "train/<wnid>/ or val/<wnid>/ folders")
def read_imagenet100(card: Card, d: Path, split: str, transform, *, seed=None, verify=False) -> Loaded:
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
        # stacklevel 3: the caller of load_dataset, which calls this reader
        warnings.warn(f"imagenet100: {len(missing)} of 100 synsets missing in {base} (e.g. {missing[0]}); "
                      f"loading the {100 - len(missing)} present, num_classes stays 100", stacklevel=3)
    ds = _files(files, labels, transform, verify)
    return Loaded(ds, ds.labels, wnids, missing)


@register_reader("imagefolder", probe=lambda card, base: base if base.is_dir() else None,
                 where="the card's own directory")
def read_imagefolder(card: Card, root: None, split: str, transform, *, seed=None, verify=False) -> Loaded:
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
    ds = _files(files, labels, transform, verify)
    return Loaded(ds, ds.labels, classes, root=Path(card.path))
