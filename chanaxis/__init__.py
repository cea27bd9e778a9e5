"""chanaxis: every channel of a convolutional network on two axes — local replaceability and task information.

The public API is the functions below; each stage's function is the stage module's own (its real signature and
parameters: `help(chanaxis.prune)`), imported on first use so that `import chanaxis` stays light.
"""
from .version import __version__  # noqa: E402

from . import layout  # noqa: E402
layout.extend_path()  # a source checkout: chanaxis.adapters/.cli/.data_cards are ./adapters, ./cli, ./data_cards

from importlib import import_module

from .errors import ChanaxisError  # noqa: E402
from .registry import load_model  # noqa: E402
from .store import open_run  # noqa: E402
from . import accessor as _accessor  # noqa: E402,F401  (registers ds.chanaxis)

# public name → the module that defines it
LAZY = {
    "load_dataset": "chanaxis.data",
    "capture": "chanaxis.stages.capture",
    "metrics": "chanaxis.stages.metrics",
    "trajectory": "chanaxis.stages.trajectory",
    "lesion": "chanaxis.interventions.lesion",
    "prune": "chanaxis.interventions.prune",
    "train": "chanaxis.training",
    "analyze": "chanaxis.study",
    "compare": "chanaxis.comparison",
}


def __getattr__(name: str):
    if name in LAZY:
        fn = getattr(import_module(LAZY[name]), name)
        globals()[name] = fn
        return fn
    raise AttributeError(f"module 'chanaxis' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(LAZY))


__all__ = ["ChanaxisError", "load_model", "open_run", "__version__", *LAZY]
