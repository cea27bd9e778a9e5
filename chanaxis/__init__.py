"""chanaxis: every channel of a convolutional network on two axes — local replaceability and task information."""
__version__ = "0.1.0"

from .errors import ChanaxisError  # noqa: E402
from .registry import load_model  # noqa: E402
from .store import open_run  # noqa: E402
from . import accessor as _accessor  # noqa: E402,F401  (registers ds.chanaxis)


def load_dataset(*args, **kwargs):
    from .data import load_dataset as _load
    return _load(*args, **kwargs)


def capture(*args, **kwargs):
    from .stages.capture import capture as _capture
    return _capture(*args, **kwargs)


def metrics(*args, **kwargs):
    from .stages.metrics import metrics as _metrics
    return _metrics(*args, **kwargs)


def lesion(*args, **kwargs):
    from .interventions.lesion import lesion as _lesion
    return _lesion(*args, **kwargs)


def prune(*args, **kwargs):
    from .interventions.prune import prune as _prune
    return _prune(*args, **kwargs)


def train(*args, **kwargs):
    from .training import train as _train
    return _train(*args, **kwargs)


def trajectory(*args, **kwargs):
    from .stages.trajectory import trajectory as _trajectory
    return _trajectory(*args, **kwargs)


def analyze(*args, **kwargs):
    from .stages.analyze import analyze as _analyze
    return _analyze(*args, **kwargs)


__all__ = ["metrics", "lesion", "prune", "train", "trajectory", "analyze", "ChanaxisError", "load_model", "load_dataset", "capture", "open_run", "__version__"]
