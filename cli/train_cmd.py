"""`chanaxis train`: train a model from the data card's recipe with a checkpoint schedule."""
from __future__ import annotations

import tomllib

from chanaxis.errors import ChanaxisError


def _recipe_overrides(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ChanaxisError(f"--recipe {item!r} is not KEY=VALUE (e.g. --recipe lr=0.01)")
        try:  # TOML literals: 0.01, true, "adam"; a bare word is a string
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


def cmd_train(a) -> None:
    from chanaxis.cli.main import _device, out
    from chanaxis.training import train
    m = train(a.model, a.dataset, a.out, epochs=a.epochs, checkpoints=a.checkpoints, seed=a.seed,
              pretrained=a.pretrained, device=_device(a.device), batch_size=a.batch_size,
              max_batches_per_epoch=a.max_batches, train_subset=a.train_subset, eval_subset=a.eval_subset,
              recipe=_recipe_overrides(a.recipe), root=a.data_root, num_workers=a.workers, progress=not a.quiet)
    best = m["best"]
    last = m["history"][-1]
    out.print(f"[green]trained[/] {m['model']['name']} on {m['dataset']['name']} for {m['epochs_done']} epochs into "
              f"{a.out}: final eval accuracy {last['eval_acc']:.2f} %, best {best['eval_acc']:.2f} % at epoch "
              f"{best['epoch']}; checkpoints at epochs {', '.join(sorted(m['checkpoints'], key=int))}")


def register(sub) -> None:
    s = sub.add_parser("train", help="train a model with the data card's recipe, saving checkpoints on a schedule")
    s.add_argument("model", help="timm model name, e.g. resnet18 (small-image stems at ≤ 64 px)")
    s.add_argument("--dataset", "-d", required=True, help="data card name or an ImageFolder path")
    s.add_argument("--data-root", default=None, help="where the dataset lies (default: the card's search paths)")
    s.add_argument("--out", "-o", required=True, help="run folder (checkpoints/, manifest.json, state.pt)")
    s.add_argument("--epochs", type=int, default=None, help="default: the card's recipe")
    s.add_argument("--checkpoints", default=None,
                   help="epochs to save, e.g. 0,1,2,3,5,10,20 (0 = initialisation; default: 0,1,2,3,5,10,20,40,… "
                        "and the last epoch)")
    s.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    s.add_argument("--pretrained", action="store_true", help="start from timm's pretrained backbone (lr × 0.1)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--batch-size", type=int, default=None, help="default: the card's recipe")
    s.add_argument("--train-subset", type=int, default=None, help="train on a fixed random subset of N images")
    s.add_argument("--eval-subset", type=int, default=None, help="evaluate on a fixed random subset of N images")
    s.add_argument("--max-batches", type=int, default=None, help="at most N batches per epoch")
    s.add_argument("--recipe", action="append", metavar="KEY=VALUE",
                   help="override a recipe field (optimizer, lr, momentum, nesterov, schedule, weight_decay, …)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)
