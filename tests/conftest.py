"""Fixtures shared by several test modules (the dataset-folder writers are in ``fixtures_data.py``)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids thread contention on a shared, busy CPU.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
