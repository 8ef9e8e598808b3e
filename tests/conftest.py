"""Tests run on one torch thread: the CI machine has two cores, the tensors are small, and the
chapter kernels (nbval) run in processes of their own."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for every test, restored afterwards (some code under test sets its own)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
