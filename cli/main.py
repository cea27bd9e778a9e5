"""The `chanaxis` command: parses, calls the library, prints with rich. No analysis logic here."""
from __future__ import annotations

import argparse
import sys
import warnings

from rich.table import Table

from chanaxis.cli.common import out


def cmd_models(a) -> None:
    from chanaxis.registry import adapters
    timm_adapter = adapters().get("timm")
    t = Table(title="models chanaxis opens")
    t.add_column("source", overflow="fold")
    t.add_column("models", overflow="fold")
    if timm_adapter is not None:
        from chanaxis.adapters.timm import FEATURED
        names = timm_adapter.list_models(a.pattern or "*")
        shown = names if a.pattern else list(FEATURED)
        t.add_row("timm", ", ".join(shown) + (f"  (+ {len(names) - len(shown)} more: chanaxis models 'res*')"
                                               if not a.pattern else f"  ({len(names)} matching)"))
    t.add_row("onnx", "any .onnx file with Conv layers (path ending in .onnx)" if "onnx" in adapters() else
              "(onnx adapter not available)")
    t.add_row("torch", "any torch.nn.Module through the Python API: chanaxis.load_model(module)")
    out.print(t)


def cmd_datasets(a) -> None:
    from chanaxis.data import availability, list_cards
    cards = {c.name: c for c in list_cards()}
    t = Table(title="datasets (data cards)")
    for col in ("name", "classes", "size (px)", "available", "where / how to get it"):
        t.add_column(col, overflow="fold")  # long paths and URLs fold whole, never cut with "…"
    for av in availability(a.data_root):
        c = cards[av.name]
        t.add_row(av.name, str(c.num_classes), str(c.image_size), "yes" if av.available else "no",
                  av.where if av.available else av.how_to_get)
    out.print(t)
    out.print("Any ImageFolder directory (root/<class>/*.jpg or root/train|val/<class>/*) also works as --dataset.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chanaxis", description="Two-axis channel analysis of convolutional networks.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list supported models")
    s.add_argument("pattern", nargs="?", default=None, help="wildcard filter, e.g. 'resnet*'")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("datasets", help="list data cards and whether each is available here")
    s.add_argument("--data-root", default=None, metavar="DIR",
                   help="look for each dataset in DIR or DIR/NAME (default: each card's search paths)")
    s.set_defaults(func=cmd_datasets)

    # each later stage registers its own subcommand from its own module: register(subparsers)
    import importlib
    for mod in COMMAND_MODULES:
        importlib.import_module(f"chanaxis.cli.{mod}").register(sub)
    for command in sub.choices.values():  # every command that takes a dataset can fetch it
        if "--dataset" in command._option_string_actions:
            command.add_argument("--download", action="store_true",
                                 help="fetch the dataset first when it is not found (cifar10, cifar100, fashion-mnist: "
                                      "into --data-root, else $CHANAXIS_DATA/NAME or ~/.cache/chanaxis/NAME)")
    return p


def fetch_dataset(a) -> None:
    """--download: make the dataset present before the command runs, where every later stage looks for it."""
    if getattr(a, "download", False) and getattr(a, "dataset", None):
        from chanaxis.data import get_card, load_dataset
        card = get_card(a.dataset)
        load_dataset(a.dataset, split=card.splits[0], root=getattr(a, "data_root", None), download=True)


COMMAND_MODULES: list[str] = ["capture_cmd", "metrics_cmd", "train_cmd", "trajectory_cmd", "lesion_cmd", "prune_cmd",
                              "analyze_cmd", "report_cmd", "compare_cmd"]


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """argparse, with an unknown option answered by the nearest valid option of that command."""
    import difflib
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        valid = [o for o in sub._option_string_actions if o.startswith("--")]
        unknown = next((x for x in extra if x.startswith("-")), extra[0])
        near = difflib.get_close_matches(unknown.split("=")[0], valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else f"; `chanaxis {args.command} --help` lists the options"
        sub.error(f"unrecognized argument {unknown}{hint}")
    return args


def main(argv=None) -> int:
    from chanaxis.errors import ChanaxisError
    args = parse(build_parser(), argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            fetch_dataset(args)
            args.func(args)
    except ChanaxisError as e:
        from chanaxis.cli.common import err
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        from chanaxis.cli.common import err
        err.print("interrupted; rerun the same command to resume")
        return 130
    except OSError as e:  # the machine said no (disk full, read-only folder): one line, never a traceback
        import errno
        from chanaxis.cli.common import err
        what = {errno.ENOSPC: "the disk is full", errno.EROFS: "the folder is read-only",
                errno.EACCES: "permission denied"}.get(e.errno, e.strerror or type(e).__name__)
        err.print(f"[bold red]error:[/] {what} ({e.filename or 'a file'}); free space or choose a writable --out, "
                  "then rerun the same command to resume", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
