"""Reading state dicts (.pt/.pth/.safetensors) and loading them into a module, reporting what did not fit; reading
a training run's manifest.

Core code: the adapters open checkpoints through it, and so does the trajectory, which loads every checkpoint
into one model.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ChanaxisError
from .locations import is_url, location


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (unwrapped from {"state_dict": ...} and the like, without "module.")."""
    path = location(path)
    if not path.is_file():
        raise ChanaxisError(f"checkpoint '{path}' does not exist; pass the path of a .pt, .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load, load_file
            sd = load(path.read_bytes()) if is_url(path) else load_file(str(path))
        else:
            with path.open("rb") as f:
                sd = torch.load(f, map_location="cpu", weights_only=True)
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
    bad = [f"{k} {tuple(v.shape)}≠{tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
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


# a training run folder (`chanaxis train --out`): its manifest names the model, dataset and checkpoints
MANIFEST = "manifest.json"
KIND = "chanaxis-training"


def read_manifest(run_dir: str | Path) -> dict:
    p = location(run_dir) / MANIFEST
    if not p.is_file():
        raise ChanaxisError(f"'{run_dir}' is not a chanaxis training run (no {MANIFEST}); create one with "
                            "`chanaxis train MODEL --dataset D --out RUN_DIR`")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ChanaxisError(f"'{p}' is not valid JSON; the run folder is damaged, train into a new --out") from None
    if m.get("kind") != KIND:
        raise ChanaxisError(f"'{p}' is not a chanaxis training manifest")
    return m
