"""Default KV memory budgets for the machine the engine runs on."""

from __future__ import annotations

import os

import torch

_FALLBACK_MEMORY = 16 << 30  # where the OS does not say


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_MEMORY


def default_kv_budget_bytes(device: torch.device) -> int:
    """For running sequences: three quarters of the GPU's free memory (after the weights are in),
    or a quarter of the machine's memory on the CPU (the weights' pages need the rest)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] * 3 // 4
    return physical_memory_bytes() // 4


def default_prefix_cache_mb() -> int:
    """1 GiB, or an eighth of the machine's memory where that is less."""
    return min(1024, physical_memory_bytes() // 8 >> 20)
