"""Where the subpackages that live outside `chanaxis/` are found when chanaxis runs from a source checkout.

The repository keeps `adapters/`, `cli/` and `data_cards/` at its top level, and pyproject.toml's `package-dir` maps
them to `chanaxis.adapters`, `chanaxis.cli` and `chanaxis.data_cards`. A wheel copies them under `chanaxis/`, and an
editable install adds a finder that maps them; but Python started in the repository root finds `./chanaxis/` first
(sys.path[0] is the current directory) and, without either installation, would not find the three subpackages.
`extend_path()` then adds a finder for exactly those three names, pointing at the checkout's folders.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

# subpackage → its folder at the top of the repository, as pyproject.toml's [tool.setuptools] package-dir says
SUBPACKAGES = {"chanaxis.adapters": "adapters", "chanaxis.cli": "cli", "chanaxis.data_cards": "data_cards"}


def checkout_root() -> Path | None:
    """The repository root when this chanaxis package is the one of a source checkout, else None."""
    root = Path(__file__).absolute().parent.parent
    if not (root / "pyproject.toml").is_file():
        return None
    if not all((root / folder / "__init__.py").is_file() for folder in SUBPACKAGES.values()):
        return None
    return root


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the subpackages it was given (name → folder); every other name is left to the other finders."""

    def __init__(self, folders: dict[str, Path]):
        self.folders = dict(folders)

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def extend_path() -> dict[str, str]:
    """From a source checkout, make the three subpackages resolve to this checkout's folders; idempotent.

    Nothing is added where they already do: a wheel (no checkout), or an editable install of this same checkout.
    Where another finder would give another tree's folders (an editable install of another checkout), or none, a
    finder for exactly these names is put first. Returns {subpackage: folder} of what it maps, empty when nothing.
    """
    for finder in sys.meta_path:
        if isinstance(finder, CheckoutFinder):
            return {name: str(folder) for name, folder in finder.folders.items()}
    root = checkout_root()
    if root is None:
        return {}
    wanted = {name: root / folder for name, folder in SUBPACKAGES.items()}
    missing = {name: folder for name, folder in wanted.items() if found_at(name) != folder.resolve()}
    if missing:
        sys.meta_path.insert(0, CheckoutFinder(missing))
    return {name: str(folder) for name, folder in missing.items()}


def found_at(name: str) -> Path | None:
    """The folder the other finders give for subpackage `name` (resolved), None when none finds it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without __spec__
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent
