"""The op tests work on tiny tensors: one intra-op thread is fastest, and it keeps the run time
steady when the CPU is shared (spinning OpenMP workers slow tiny ops down many-fold when another
process holds a core)."""

from __future__ import annotations

import contextlib

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _single_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def intra_op_threads():
    """`with intra_op_threads(n):` runs a block on n intra-op threads (the package pins one)."""

    @contextlib.contextmanager
    def use(n: int):
        threads = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    return use


@pytest.fixture(scope="session")
def extension():
    """The C++ ops module (engine.ops.extension), built if needed. Failing to build is a test failure:
    the extension is part of the product on every machine with a C++ compiler."""
    from engine.ops import extension as module

    assert module.load(), "the C++ ops extension did not build or load; see the log"
    return module


def cpu_has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= set(flags)


@pytest.fixture(params=["avx2", "avx512_bf16"])
def cpu_isa(request, monkeypatch):
    """Runs a test once with the AVX2 kernels (GPTOSS_CPU_ISA=avx2, which the kernels read on every
    call) and once with the AVX-512 BF16 kernels where the CPU has them."""
    if request.param == "avx2":
        monkeypatch.setenv("GPTOSS_CPU_ISA", "avx2")
    elif not cpu_has_avx512_bf16():
        pytest.skip("this CPU has no AVX-512 BF16: the AVX2 kernels are the ones it runs")
    else:
        monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    return request.param
