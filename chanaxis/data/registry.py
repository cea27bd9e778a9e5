"""The reader registry: one reader per card ``format``, registered by name with ``register_reader``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from chanaxis.errors import ChanaxisError

from .cards import Card


@dataclasses.dataclass
class Loaded:
    """What a reader returns: the split as a Dataset and the label of every item."""

    dataset: Dataset
    labels: np.ndarray
    classes: list[str] | None                 # None: "0", "1", ... up to the card's num_classes
    missing_classes: list[str] = dataclasses.field(default_factory=list)
    root: Path | None = None                  # where the data came from, for formats that need nothing located


@dataclasses.dataclass(frozen=True)
class Reader:
    """A format's reader and how to find its data; see ``register_reader``."""

    read: Callable[..., Loaded]
    probe: Callable[[Card, Path], Path | None] | None = None
    looked_for: Callable[[Card], str] | None = None
    where: str | None = None


READERS: dict[str, Reader] = {}


def register_reader(fmt: str, *, probe: Callable[[Card, Path], Path | None] | None = None,
                    looked_for: Callable[[Card], str] | None = None, where: str | None = None):
    """Decorator: ``fn`` reads cards whose ``format`` is ``fmt``; a later registration of ``fmt`` replaces it.

    ``fn(card, root, split, transform, *, seed, verify) -> Loaded``: ``root`` is the located data directory (None
    when ``where`` is given), ``split`` one of ``card.splits``, ``transform`` the callable each item must go through.
    probe(card, base): the data directory of ``card`` under a search location ``base``, or None if it is not there.
    looked_for(card): what the missing-data error says was looked for.
    where: for data that needs nothing located (bundled, generated, the card's own directory): where it comes from,
    as ``availability`` reports it.
    """
    def deco(fn: Callable[..., Loaded]) -> Callable[..., Loaded]:
        READERS[fmt] = Reader(fn, probe, looked_for, where)
        return fn
    return deco


def get_reader(card: Card) -> Reader:
    try:
        return READERS[card.format]
    except KeyError:
        raise ChanaxisError(f"data card {card.name} has unknown format {card.format!r}; fix the card file "
                            f"(known formats: {', '.join(sorted(READERS))})") from None
