"""Stage parameters: frozen dataclasses whose fields carry their unit, help, range and choices.

A parameters class is the only home of a stage's defaults; presets are named instances of it. Validation lives in
`__post_init__`, so every entry point (the CLI, the Python API, `analyze --set`) refuses the same bad values the same
way, and `make` refuses unknown keywords naming the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import ChanaxisError


def param(default: Any, help: str, unit: str = "", *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, choices: tuple | None = None, none: str | None = None,
          cli: bool = True, aliases: tuple[str, ...] = ()) -> Any:
    """A parameter field. `none` names what None means ("all", "the card's recipe") where None is allowed;
    `cli=False` keeps a field out of the generated command line (Python API and `--set` only); `aliases` are
    further option names (e.g. "--batch-size")."""
    meta = {"help": help, "unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "none": none,
            "cli": cli, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("parameter defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of every stage's parameters."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name], f.metadata)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (a subclass adds its own)."""

    @classmethod
    def make(cls, base: "Params | None" = None, **kwargs) -> "Params":
        """`base` (or the defaults) with `kwargs` replaced; an unknown keyword is an error naming the nearest one."""
        check_keywords(cls, kwargs)
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One dict per field: name, type, default, unit, help, range, choices (for help and docs)."""
        hints = typing.get_type_hints(cls)
        return [{"name": f.name, "type": hints[f.name], "default": f.default, **f.metadata}
                for f in dataclasses.fields(cls)]


def as_pairs(value) -> tuple | None:
    """A mapping (or (key, value) pairs) as a tuple of pairs, the immutable form a parameters field keeps; None when
    empty."""
    if value is None:
        return None
    try:
        return tuple((str(k), v) for k, v in (value.items() if isinstance(value, Mapping) else value)) or None
    except (TypeError, ValueError):
        raise ChanaxisError(f"{value!r} is not a mapping of KEY: VALUE (e.g. {{'lr': 0.01}})") from None


def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_keywords(cls, kwargs, what: str | None = None) -> None:
    valid = names(cls)
    for k in kwargs:
        if k not in valid:
            near = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ChanaxisError(f"unknown {what or cls.__name__.removesuffix('Params').lower() + ' parameter'} "
                                f"'{k}'; {hint}valid: {', '.join(valid)}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def base_types(tp) -> tuple[list, bool]:
    """(the non-None members of a type hint, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _coerce(name: str, value, tp, meta):
    kinds, optional = base_types(tp)
    if value is None:
        if optional:
            return None
        raise ChanaxisError(f"{name} ({flag(name)}) must be given; it has no 'none' value")
    kind = kinds[0]
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis} or {str}
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        out = tuple(_coerce_one(name, v, item, meta) for v in value)
        if not out:
            raise ChanaxisError(f"{name} ({flag(name)}) must list at least one value")
        return out
    return _coerce_one(name, value, kind, meta)


def _coerce_one(name, value, kind, meta):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ChanaxisError(f"{name} ({flag(name)}) must be true or false, not {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ChanaxisError(f"{name} ({flag(name)}) must be a whole number, not {value!r}")
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ChanaxisError(f"{name} ({flag(name)}) must be a whole number, not {value!r}") from None
    elif kind is float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ChanaxisError(f"{name} ({flag(name)}) must be a number, not {value!r}") from None
        if value != value:
            raise ChanaxisError(f"{name} ({flag(name)}) must be a number, not NaN")
    elif kind is str:
        if not isinstance(value, str):
            raise ChanaxisError(f"{name} ({flag(name)}) must be text, not {value!r}")
    unit = f" {meta.get('unit')}" if meta.get("unit") and meta.get("unit") != "1" else ""
    for key, ok, word in (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ChanaxisError(f"{name} ({flag(name)}) must be {word} {bound:g}{unit}, not {value:g}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ChanaxisError(f"{name} ({flag(name)}) must be one of {', '.join(map(str, choices))}, "
                            f"not {value!r}{hint}")
    return value
