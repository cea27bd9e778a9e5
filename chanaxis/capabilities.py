"""Optional model capabilities (DESIGN: declared, not assumed): a stage asks with `require` before it starts."""
from __future__ import annotations

from .errors import CapabilityError

KNOWN = ("gradients", "run_from", "train_step")
_ALTERNATIVE = {
    "gradients": "load the torch model instead (a timm name with --checkpoint, or the nn.Module)",
    "train_step": "load the torch model instead (a timm name with --checkpoint, or the nn.Module)",
    "run_from": "run the full forward pass instead",
}


def has(model, capability: str) -> bool:
    return capability in getattr(model, "capabilities", frozenset())


def require(model, capability: str, what: str | None = None) -> None:
    """Raise CapabilityError (one line, naming the alternative) unless `model` declares `capability`."""
    if capability not in KNOWN:
        raise ValueError(f"unknown capability '{capability}'; known: {', '.join(KNOWN)}")
    if has(model, capability):
        return
    spec = getattr(model, "spec", {}) or {}
    source = spec.get("adapter", type(model).__name__)
    kind = "an ONNX model (onnxruntime)" if source == "onnx" else f"a {source} model"
    what = what or "this command"
    joiner = "; or " if ";" in what else "; "  # `what` may already carry a remedy of its own
    raise CapabilityError(f"{kind} has no {capability.replace('_', ' ')}, needed for {what}{joiner}"
                          f"{_ALTERNATIVE[capability]}")
