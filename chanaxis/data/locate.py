"""Where a card's data lies on this machine: search paths, probing, availability, the missing-data error, download."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from chanaxis.errors import ChanaxisError

from .cards import Card, get_card, list_cards
from .registry import READERS


def _candidates(card: Card, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        r = Path(root).expanduser()
        out = [r, r / card.name]
    else:
        out = []
        for s in card.search:
            if "$CHANAXIS_DATA" in s and not os.environ.get("CHANAXIS_DATA"):
                continue  # expandvars would leave "$CHANAXIS_DATA/..." as a relative path
            out.append(Path(os.path.expandvars(s)).expanduser())
    return list(dict.fromkeys(out))


def _what_is_looked_for(card: Card) -> str:
    reader = READERS.get(card.format)
    return reader.looked_for(card) if reader is not None and reader.looked_for is not None else "the data"


def locate(card: Card | str, root: str | os.PathLike | None = None) -> Path | None:
    """Where the card's data lies on this machine (None if not found; None also for built-in datasets)."""
    card = card if isinstance(card, Card) else get_card(card)
    reader = READERS.get(card.format)
    if reader is None or reader.probe is None:
        return None
    for base in _candidates(card, root):
        found = reader.probe(card, base)
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
        reader = READERS.get(card.format)
        if reader is not None and reader.where is not None:
            out.append(Availability(card.name, True, reader.where, card.how_to_get))
        else:
            p = locate(card, root)
            out.append(Availability(card.name, p is not None, str(p) if p else None, card.how_to_get))
    return out


def _missing(card: Card, tried: list[Path]) -> ChanaxisError:
    tried_s = ", ".join(str(t) for t in tried) or "(no location: set CHANAXIS_DATA or pass a root)"
    return ChanaxisError(f"{card.name} not found: looked for {_what_is_looked_for(card)} in {tried_s}; "
                         f"to get it: {card.how_to_get}")


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


def locate_or_download(card: Card, root: str | os.PathLike | None, download: bool) -> Path:
    """The card's data directory; downloaded first if allowed and possible, else the missing-data error."""
    found = locate(card, root)
    if found is not None:
        return found
    if download and card.download:
        return _download(card, root)
    raise _missing(card, _candidates(card, root))
