"""Load a state dict from .pt/.pth/.safetensors into a module, reporting what did not fit."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from chanaxis.errors import ChanaxisError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ChanaxisError(f"checkpoint '{path}' does not exist; pass the path of a .pt, .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is the file's fault
        raise ChanaxisError(f"cannot read checkpoint '{path}' ({type(e).__name__}); is it a state dict saved with "
                            "torch.save or safetensors?") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ChanaxisError(f"checkpoint '{path}' holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_into(module: nn.Module, path: str | Path, strict: bool = True) -> dict[str, list[str]]:
    """Load and return {'missing': [...], 'unexpected': [...]}; a shape mismatch or missing key is an error."""
    sd = read_state_dict(path)
    own = module.state_dict()
    bad = [f"{k} {tuple(v.shape)}≠{tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ChanaxisError(f"checkpoint '{path}' does not fit this model: {len(bad)} shape mismatches, e.g. {bad[0]}; "
                            "check --num-classes, the image size (small-image stems) and the model name")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing and strict:
        raise ChanaxisError(f"checkpoint '{path}' does not fit this model: {len(missing)} missing keys, e.g. "
                            f"{missing[0]}; is it a checkpoint of another architecture?")
    if unexpected:
        warnings.warn(f"checkpoint '{path}': {len(unexpected)} unexpected keys ignored, e.g. {unexpected[0]}",
                      stacklevel=2)
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}
