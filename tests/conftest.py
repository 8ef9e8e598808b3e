"""Tests run on one torch thread: the CI machine has two cores, the tensors are small, and the
chapter kernels (nbval) run in processes of their own."""
import io
from contextlib import redirect_stderr, redirect_stdout

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


def _toy_cli(*args):
    """``(status, stdout, stderr)`` of ``python -m emd_lib toy ARGS``, run in-process."""
    from emd_lib.commands import toy

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = toy.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def toy_cli():
    """The toy command run in-process: ``rc, out, err = toy_cli(*args)``."""
    return _toy_cli
