import os

import pytest
import torch

# Small models train faster on one thread, and tests must not fight each other for cores.
torch.set_num_threads(1)
os.environ.setdefault("SLIMKIT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "slimkit"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
