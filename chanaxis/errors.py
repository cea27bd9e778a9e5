"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class ChanaxisError(Exception):
    """A mistake in what the user asked for (bad name, missing data, wrong store...).

    The message must say what was wrong and what to do about it, in one line.
    """


class CapabilityError(ChanaxisError):
    """The model cannot provide what a command needs (e.g. gradients of an ONNX model)."""
