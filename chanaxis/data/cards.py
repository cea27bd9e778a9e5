"""Data cards: the packaged ``data_cards/<name>.toml`` files by name, and ImageFolder directories as cards."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import importlib.resources
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from chanaxis.errors import ChanaxisError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Card:
    """What a dataset is (classes, size, mean/std, splits), how it lies on disk (``format`` + ``[layout]``), where to
    look for it, how to get it, how to augment it and how to train on it."""

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


def package_text(name: str) -> str:
    """A text file shipped next to the cards (e.g. ``imagenet100_wnids.txt``)."""
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
    imagenet = _cards().get("imagenet100")  # a user's photos train best with the ImageNet recipe
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
