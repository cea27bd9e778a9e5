"""Reopen what a run store was made from: the model (same weights) and the dataset splits."""
from __future__ import annotations

from pathlib import Path

from . import store
from .errors import ChanaxisError
from .registry import load_model


def run_config(path: str | Path) -> dict:
    return store.run_config(path)


def model_for_dataset(spec, dataset, image_size: int | None = None, num_classes: int | None = None, **kwargs):
    """`load_model(spec)` sized for `dataset` (a card name, an ImageFolder path or a loaded handle): its classes
    and image size unless given. Only an absent value takes the card's: 0 is a value, refused with the minimum."""
    from .data import get_card
    card = dataset.card if hasattr(dataset, "card") else get_card(dataset, image_size=image_size or None)
    return load_model(spec, num_classes=card.num_classes if num_classes is None else num_classes,
                      image_size=card.image_size if image_size is None else image_size, **kwargs)


def model_from_store(path: str | Path, device: str = "cpu", model=None):
    """The model the store was captured with; its weight hash must match the stored one."""
    cfg = run_config(path)
    spec = dict(cfg["model"])
    if model is None:
        source = spec.get("source") or spec.get("name")
        if spec.get("adapter") == "torch":
            raise ChanaxisError(f"'{path}' was captured from a Python nn.Module; pass the same module again "
                                "(model=...) to reload it")
        kwargs = {k: spec[k] for k in ("num_classes", "image_size", "pretrained", "checkpoint", "init_seed")
                  if spec.get(k) is not None}
        model = load_model(source, device=device, **kwargs)
    if model.weights_sha256() != cfg["weights_sha256"]:
        raise ChanaxisError(f"the model's weights differ from those captured in '{path}' (sha256 mismatch); "
                            "has the checkpoint file changed? Capture again into a new --out")
    return model


def dataset_from_store(path: str | Path, split: str | None = None, transform: str = "eval"):
    """The dataset of the store; `split=None` gives the split captured, "eval" the card's evaluation split."""
    from .data import load_dataset
    cfg = run_config(path)
    d = cfg["dataset"]
    spec = cfg["model"]
    name = d["name"]
    if d.get("path"):  # an ImageFolder: found by its recorded absolute path, from any working directory
        if not Path(d["path"]).is_dir():
            raise ChanaxisError(f"the ImageFolder dataset of '{path}' was at {d['path']}, which is not there any "
                                "more; put it back there (the store's results refer to those images)")
        name = d["path"]
    return load_dataset(name, split=split or d["split"], root=d.get("root"), transform=transform,
                        image_size=spec.get("image_size") or spec.get("input_size", [3, None, None])[1])
