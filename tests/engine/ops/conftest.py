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


@pytest.fixture(scope="session")
def extension():
    """The C++ ops module (engine.ops.extension), built if needed. Failing to build is a test failure:
    the extension is part of the product on every machine with a C++ compiler."""
    from engine.ops import extension as module

    assert module.load(), "the C++ ops extension did not build or load; see the log"
    return module
