import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# subprocesses the tests start (a CLI run killed and resumed, a cluster's workers) compute with the same intra-op
# thread count as this process: a fine-tune's or a training step's weight gradients are sums whose order follows it
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(torch.get_num_threads())


@pytest.fixture(scope="session")
def tiny_resnet():
    import chanaxis
    torch.manual_seed(0)
    return chanaxis.load_model("test_resnet", num_classes=10, image_size=32)


# the tiny study of every stage (test_resnet on `synthetic`): made once per session, read by test_analyze and
# test_store_conventions; a test that changes a store works on a copy
TINY = {
    "train": {"epochs": 2, "checkpoints": "0,1,2", "train_subset": 256, "eval_subset": 128},
    "capture": {"n_calibration": 64},
    "metrics": {"n_null": 1, "n_perm": 20, "n_triplets": 100, "geometry_images": 32},
    "trajectory": {"n_calibration": 32},
    "lesion": {"fraction": 0.1, "eval_images": 64},
    "prune": {"methods": ["input_capture", "task_info", "magnitude", "random"], "levels": [0.3, 0.6],
              "finetune_epochs": 1, "finetune_batches": 2, "seeds": [42, 123], "eval_images": 64,
              "n_resamples": 500},
}


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """(study folder, summary) of `analyze` with TINY overrides: ~1–2 min."""
    from chanaxis.study import analyze
    out = tmp_path_factory.mktemp("study") / "s"
    summary = analyze("test_resnet", "synthetic", out, preset="quick", overrides=TINY, progress=False,
                      estimate=False)
    return out, summary
