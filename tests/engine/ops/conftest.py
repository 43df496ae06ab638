"""The op tests work on tiny tensors: one intra-op thread is fastest, and it keeps the run time
steady when the CPU is shared (spinning OpenMP workers slow tiny ops down many-fold when another
process holds a core)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _single_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
