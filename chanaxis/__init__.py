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


__all__ = ["metrics", "ChanaxisError", "load_model", "load_dataset", "capture", "open_run", "__version__"]
