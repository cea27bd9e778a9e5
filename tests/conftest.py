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
