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


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_avx512_bf16() -> bool:
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= _cpu_flags()


def cpu_has_amx() -> bool:
    return cpu_has_avx512_bf16() and {"amx_tile", "amx_bf16"} <= _cpu_flags()


@pytest.fixture(params=["avx2", "avx512_bf16", "amx"])
def cpu_isa(request, monkeypatch):
    """Runs a test once per kernel family the CPU has: the AVX2 kernels (GPTOSS_CPU_ISA=avx2, which the
    kernels read on every call), the AVX-512 BF16 ones (GPTOSS_CPU_ISA=avx512_bf16) and the AMX ones
    (no cap: the best the CPU has)."""
    if request.param == "avx512_bf16" and not cpu_has_avx512_bf16():
        pytest.skip("this CPU has no AVX-512 BF16: the AVX2 kernels are the ones it runs")
    if request.param == "amx" and not cpu_has_amx():
        pytest.skip("this CPU has no AMX-BF16")
    if request.param == "amx":
        monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("GPTOSS_CPU_ISA", request.param)
    return request.param
