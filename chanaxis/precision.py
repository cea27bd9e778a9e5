"""Numeric precision of a pass: fp32, or bf16 autocast (and channels_last memory) where the device is CUDA.

Training and fine-tuning default to "auto" (bf16 autocast on CUDA, fp32 elsewhere); the passes whose numbers feed
the metrics (capture, lesions, pruning evaluation) default to fp32. Every stage records the precision it resolved
to in the store, so two runs made differently are never mixed silently."""
from __future__ import annotations

import contextlib

import torch

from .errors import ChanaxisError

CHOICES = ("auto", "fp32", "bf16")


def resolve(precision: str, device) -> str:
    """"fp32" or "bf16" for `precision` on `device` ("auto": bf16 on CUDA, fp32 elsewhere)."""
    if precision not in CHOICES:
        raise ChanaxisError(f"unknown precision '{precision}'; use one of: {', '.join(CHOICES)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device, model=None):
    """A context in which the forward runs at `precision`: bf16 autocast, or nothing. With `model`, bf16 on a model
    that is not a torch module (onnxruntime runs its own precision) is refused instead of silently ignored."""
    if resolve(precision, device) == "bf16":
        if model is not None and not hasattr(model, "module"):
            raise ChanaxisError("bf16 autocast needs a torch model; this one runs outside torch: use --precision fp32")
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device) -> bool:
    """Whether convolutions run channels_last here: on CUDA (tensor cores), not on the CPU."""
    return torch.device(device).type == "cuda"


def to_device_layout(module: torch.nn.Module, device) -> torch.nn.Module:
    if channels_last(device):
        module.to(memory_format=torch.channels_last)
    return module


def input_layout(x: torch.Tensor, device) -> torch.Tensor:
    if channels_last(device) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
