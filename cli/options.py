"""Command-line options generated from a stage's parameters class: one option per field, help with unit and default.

Options default to "not given", so only what the user typed overrides the preset (or the defaults); every value is
then validated by the parameters class itself, the same way as in the Python API.
"""
from __future__ import annotations

import argparse
import typing

from chanaxis.params import Params, base_types, flag

NOT_GIVEN = None


def add_params(parser: argparse.ArgumentParser, params_cls: type[Params], defaults: Params | None = None,
               skip: tuple[str, ...] = ()) -> None:
    """One option per field of `params_cls` (fields with cli=False and those in `skip` left out)."""
    shown = defaults if defaults is not None else params_cls()
    group = parser.add_argument_group(f"{params_cls.__name__.removesuffix('Params').lower()} parameters")
    for d in params_cls.describe():
        if not d["cli"] or d["name"] in skip:
            continue
        kinds, optional = base_types(d["type"])
        kind = kinds[0]
        default = getattr(shown, d["name"])
        unit = f" [{d['unit']}]" if d["unit"] and d["unit"] != "1" else ""
        many = typing.get_origin(kind) in (tuple, list)
        choices = f"; {'each ' if many else ''}one of: {', '.join(map(str, d['choices']))}" if d["choices"] else ""
        none = f"; none = {d['none']}" if d["none"] else ""
        shown_default = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{d['help']}{unit}{choices}{none} (default: {'none' if default is None else shown_default})"
        names = [flag(d["name"]), *d["aliases"]]
        kw: dict = {"dest": d["name"], "default": NOT_GIVEN, "help": text.replace("%", "%%")}
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if many:
            kw.update(nargs="+", metavar=d["name"].upper())
        else:
            kw["metavar"] = "{" + ",".join(map(str, d["choices"])) + "}" if d["choices"] else d["name"].upper()
        group.add_argument(*names, **kw)


def given(args: argparse.Namespace, params_cls: type[Params]) -> dict:
    """The fields the user gave on the command line, as raw values for `params_cls.make` to coerce and check."""
    out = {}
    for d in params_cls.describe():
        v = getattr(args, d["name"], NOT_GIVEN)
        if v is NOT_GIVEN:
            continue
        if isinstance(v, list):
            v = ",".join(v)
        if base_types(d["type"])[1] and isinstance(v, str) and v.lower() == "none":
            v = None
        out[d["name"]] = v
    return out


def stage_command(sub, stage_cls, func, run_help: str, overwrite: str | None = None) -> argparse.ArgumentParser:
    """The subcommand of a stage that works on a run store: `chanaxis NAME RUN [its parameters]`."""
    from chanaxis.cli.common import add_run_options
    s = sub.add_parser(stage_cls.name, help=stage_cls.help)
    s.add_argument("run", help=run_help)
    add_params(s, stage_cls.Params)
    add_run_options(s, overwrite=overwrite)
    s.set_defaults(func=func)
    return s
