"""gptoss::cpu_kernels names the kernel family the bf16 and float32 ops run, as GPTOSS_CPU_ISA caps it."""

from __future__ import annotations

import torch


def _avx2_build() -> bool:
    # the extension is built with AVX2+FMA code paths where torch reports that capability
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def test_bf16_work_runs_on_the_family_the_cap_selects(extension, cpu_isa):
    assert extension.cpu_kernels(torch.bfloat16) == (cpu_isa if _avx2_build() else "portable")


def test_float32_work_runs_on_the_avx2_kernels_whatever_the_cap(extension, cpu_isa):
    assert extension.cpu_kernels(torch.float32) == ("avx2" if _avx2_build() else "portable")
