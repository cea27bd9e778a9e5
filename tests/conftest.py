import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_resnet():
    import chanaxis
    torch.manual_seed(0)
    return chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
