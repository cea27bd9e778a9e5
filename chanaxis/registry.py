"""Adapters are found by entry point (group `chanaxis.adapters`), as xarray finds its backends."""
from __future__ import annotations

import difflib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from .errors import ChanaxisError


@lru_cache(maxsize=1)
def adapters() -> dict[str, Any]:
    """name → adapter instance. Each adapter has `can_open(spec)`, `open(spec, **kw)`, `list_models()`."""
    found = {}
    for ep in entry_points(group="chanaxis.adapters"):
        try:
            found[ep.name] = ep.load()()
        except ImportError:  # an adapter whose library is absent is simply not offered
            continue
    return found


def load_model(spec: Any, **kwargs):
    """Turn a spec (timm name, path to .onnx, nn.Module) into a `Model`, asking each adapter in turn."""
    registry = adapters()
    for adapter in sorted(registry.values(), key=lambda a: getattr(a, "priority", 50)):
        if adapter.can_open(spec):
            return adapter.open(spec, **kwargs)
    if isinstance(spec, str):
        names = [n for a in registry.values() for n in a.list_models()]
        near = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else "run `chanaxis models` to list supported names"
        raise ChanaxisError(f"unknown model '{spec}': no adapter can open it; {hint}")
    raise ChanaxisError(f"cannot open a model from a {type(spec).__name__}; pass a timm name, an .onnx path "
                        "or a torch.nn.Module")
