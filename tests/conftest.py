import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests are small; two threads keep them fast on the 2-core CI machine."""
    torch.set_num_threads(2)
