"""--precision: bf16 autocast for training and fine-tuning (auto: on CUDA), fp32 for the passes that feed metrics,
each recorded in the store; refused where it would be silently ignored."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chanaxis import precision
from chanaxis.errors import ChanaxisError


def test_auto_resolves_by_device():
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("auto", "cuda") == "bf16"
    assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ChanaxisError, match="unknown precision 'fp16'"):
        precision.resolve("fp16", "cpu")
    assert not precision.channels_last("cpu") and precision.channels_last("cuda:0")


def test_bf16_autocast_changes_the_forward_and_is_refused_outside_torch():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    with precision.autocast("bf16", "cpu"):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert lin(x).dtype == torch.float32

    class NotTorch:
        pass
    with pytest.raises(ChanaxisError, match="needs a torch model"):
        precision.autocast("bf16", "cpu", NotTorch())


def test_training_in_bf16_is_recorded_and_differs_from_fp32(tmp_path):
    import chanaxis
    losses = {}
    for p in ("fp32", "bf16"):
        chanaxis.train("test_resnet", "synthetic", tmp_path / p, epochs=1, max_batches_per_epoch=2, batch_size=16,
                       eval_subset=32, progress=False, loader_workers=0, precision=p)
        m = json.loads((tmp_path / p / "manifest.json").read_text())
        assert m["precision"] == p
        losses[p] = m["history"][-1]["train_loss"]
        assert np.isfinite(losses[p])
    assert losses["fp32"] != losses["bf16"]
    # resuming a finished fp32 run with another precision is another run: refused, naming the difference
    with pytest.raises(ChanaxisError, match="precision"):
        chanaxis.train("test_resnet", "synthetic", tmp_path / "fp32", epochs=1, max_batches_per_epoch=2,
                       batch_size=16, eval_subset=32, progress=False, loader_workers=0, precision="bf16")


def test_analyze_precision_sets_training_and_finetuning_only():
    from chanaxis.cli.analyze_cmd import parse_settings, precision_settings
    s = precision_settings("bf16", parse_settings(["prune.finetune_precision=fp32"]))
    assert s == {"prune": {"finetune_precision": "fp32"}, "train": {"precision": "bf16"}}
    assert precision_settings(None, {}) == {}


def test_capture_in_bf16_is_recorded_and_close_to_fp32(tmp_path):
    import chanaxis
    from chanaxis import store
    out = {}
    for p in ("fp32", "bf16"):
        model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
        path = chanaxis.capture(model, "synthetic", tmp_path / f"{p}.zarr", n_calibration=40, chunk_images=16,
                                precision=p, progress=False, loader_workers=0)
        assert store.run_config(path)["precision"] == p
        tree = chanaxis.open_run(path)
        layer = sorted(tree["layers"].children)[0]
        out[p] = np.asarray(tree[f"layers/{layer}"]["local"].values, np.float64)
    assert out["fp32"].shape == out["bf16"].shape and not np.array_equal(out["fp32"], out["bf16"])
    scale = np.abs(out["fp32"]).max()
    assert np.abs(out["fp32"] - out["bf16"]).max() < 0.05 * scale  # bf16 keeps ~3 significant digits
