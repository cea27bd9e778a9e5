"""Adapters are found by entry point (group `chanaxis.adapters`), as xarray finds its backends.

Run from a source checkout, nothing may be installed and the group may be empty: the built-in adapters are then
taken from BUILTIN_ADAPTERS (the same three entry points pyproject.toml declares). An adapter that fails to load is
left out of `adapters()` but kept with its error in `failed()`, and `load_model` names it when nothing else can open
the spec. Keywords are checked against the chosen adapter's `open` signature before it is called.
"""
from __future__ import annotations

import difflib
import inspect
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from . import layout
from .errors import ChanaxisError

GROUP = "chanaxis.adapters"
# pyproject.toml's [project.entry-points."chanaxis.adapters"], for a checkout that is not installed
BUILTIN_ADAPTERS = {
    "torch": "chanaxis.adapters.torch_module:TorchAdapter",
    "timm": "chanaxis.adapters.timm:TimmAdapter",
    "onnx": "chanaxis.adapters.onnx:OnnxAdapter",
}
# what to install when an adapter's import fails on a missing module (top-level module name → advice)
INSTALL_HINTS = {
    "onnxruntime": "install onnxruntime: pip install 'chanaxis[cpu]' (or 'chanaxis[gpu]' for onnxruntime-gpu)",
}


@dataclass(frozen=True)
class Scan:
    """What loading the group's entry points gave: adapters by name, and the ones that failed with their error."""

    adapters: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)


def adapter_entry_points() -> list[EntryPoint]:
    """The group's entry points; a built-in adapter that no installed distribution declares is added."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, value in BUILTIN_ADAPTERS.items():
        found.setdefault(name, EntryPoint(name=name, value=value, group=GROUP))
    return list(found.values())


def error_text(e: BaseException) -> str:
    """One line for an adapter's load error: an ImportError's message as is, anything else with its type."""
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    if isinstance(e, ImportError) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def install_hint(e: BaseException, ep: EntryPoint) -> str:
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if missing:
        top = missing.partition(".")[0]
        return INSTALL_HINTS.get(top, f"install the package that provides the '{top}' module")
    return f"fix or reinstall what provides {ep.value}"


@lru_cache(maxsize=1)
def scan() -> Scan:
    """Load every adapter once (cached; `refresh()` loads them again)."""
    layout.extend_path()  # from a source checkout: chanaxis.adapters lives in the top-level adapters/ folder
    result = Scan()
    for ep in adapter_entry_points():
        try:
            result.adapters[ep.name] = ep.load()()
        except Exception as e:  # noqa: BLE001 - a broken adapter must not hide the others; failed() reports it
            result.failed[ep.name] = error_text(e)
            result.hints[ep.name] = install_hint(e, ep)
    return result


def refresh() -> None:
    """Forget the loaded adapters (after installing a library, or in tests that change the entry points)."""
    scan.cache_clear()


def adapters() -> dict[str, Any]:
    """name → adapter instance. Each adapter has `can_open(spec)`, `open(spec, ...)`, `list_models()`.

    An adapter that failed to load (its library absent, say) is simply not listed here; see `failed()`.
    """
    return scan().adapters


def failed() -> dict[str, str]:
    """name → one-line error of each adapter that failed to load."""
    return dict(scan().failed)


def adapter_name(adapter) -> str:
    return getattr(adapter, "name", None) or type(adapter).__name__


def open_options(adapter) -> list[str] | None:
    """The keywords `adapter.open` takes after the spec, in signature order; None when it takes any (**kwargs)."""
    params = list(inspect.signature(adapter.open).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_options(adapter, kwargs: dict[str, Any]) -> None:
    """Unknown keywords and out-of-range values are one-line errors, before the adapter does anything."""
    name = adapter_name(adapter)
    valid = open_options(adapter)
    if valid is not None:
        for key in kwargs:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                hint = f"did you mean '{near[0]}'? " if near else ""
                raise ChanaxisError(f"unknown option '{key}' for the {name} adapter; {hint}valid: {', '.join(valid)}")
    n = kwargs.get("num_classes")
    if n is not None and (not whole(n) or n < 1):
        raise ChanaxisError(f"num_classes (--num-classes) must be a whole number of at least 1, got {n!r}")
    size = kwargs.get("image_size")
    smallest = int(getattr(adapter, "min_image_size", 1))
    if size is not None and (not whole(size) or size < smallest):
        raise ChanaxisError(f"image_size (--image-size) must be a whole number of pixels, at least {smallest} for the "
                            f"{name} adapter, got {size!r}")


def load_model(spec: Any, **kwargs):
    """Turn a spec (timm name, path to .onnx, nn.Module) into a `Model`, asking each adapter in turn."""
    found = scan()
    for adapter in sorted(found.adapters.values(), key=lambda a: getattr(a, "priority", 50)):
        if adapter.can_open(spec):
            check_options(adapter, kwargs)
            return adapter.open(spec, **kwargs)
    broken = "; ".join(f"the '{n}' adapter failed to load ({msg}): {found.hints[n]}" for n, msg in found.failed.items())
    if isinstance(spec, str):
        names = [n for a in found.adapters.values() for n in a.list_models()]
        near = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
        if broken:  # the failed adapter is the likelier reason: say it first
            hint = f"{broken}" + (f"; or did you mean {', '.join(near)}?" if near else "")
        else:
            hint = f"did you mean {', '.join(near)}?" if near else "run `chanaxis models` to list supported names"
        raise ChanaxisError(f"unknown model '{spec}': no adapter can open it; {hint}")
    raise ChanaxisError(f"cannot open a model from a {type(spec).__name__}; "
                        + (f"{broken}" if broken else "pass a timm name, an .onnx path or a torch.nn.Module"))
