"""`chanaxis train MODEL --dataset D --out DIR`: train from the data card's recipe with a checkpoint schedule."""
from __future__ import annotations

import tomllib

from chanaxis.errors import ChanaxisError


def recipe_overrides(items: list[str] | None) -> dict:
    """`--recipe KEY=VALUE` options as a dict; values are TOML literals (0.01, true, "adam"), a bare word a string."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ChanaxisError(f"--recipe {item!r} is not KEY=VALUE (e.g. --recipe lr=0.01)")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


def register(sub) -> None:
    from chanaxis.cli.common import add_run_options
    from chanaxis.cli.options import add_params
    from chanaxis.training import TrainStage
    s = sub.add_parser("train", help=TrainStage.help)
    s.add_argument("model", help="timm model name, e.g. resnet18 (small-image stems at ≤ 64 px)")
    s.add_argument("--dataset", "-d", required=True, help="data card name or an ImageFolder path")
    s.add_argument("--data-root", default=None, help="where the dataset lies (default: the card's search paths)")
    s.add_argument("--out", "-o", required=True, help="run folder (checkpoints/, manifest.json, state.pt)")
    add_params(s, TrainStage.Params)
    # the recipe is a mapping, not one value: its own repeatable option (dest kept apart from the `recipe` field)
    s.add_argument("--recipe", action="append", metavar="KEY=VALUE", dest="recipe_overrides",
                   help="override a recipe field (optimizer, lr, momentum, nesterov, schedule, weight_decay, …)")
    add_run_options(s)
    s.set_defaults(func=run)


def run(a) -> None:
    import chanaxis
    from chanaxis.cli.common import device, out
    from chanaxis.cli.options import given
    from chanaxis.training import TrainStage
    m = chanaxis.train(a.model, a.dataset, a.out, device=device(a.device), progress=not a.quiet, root=a.data_root,
                       loader_workers=a.loader_workers, scheduler=a.scheduler, workers=a.workers,
                       recipe=recipe_overrides(a.recipe_overrides), **given(a, TrainStage.Params))
    best = m["best"]
    last = m["history"][-1]
    out.print(f"[green]trained[/] {m['model']['name']} on {m['dataset']['name']} for {m['epochs_done']} epochs into "
              f"{a.out}: final eval accuracy {last['eval_acc']:.2f} %, best {best['eval_acc']:.2f} % at epoch "
              f"{best['epoch']}; checkpoints at epochs {', '.join(sorted(m['checkpoints'], key=int))}")
