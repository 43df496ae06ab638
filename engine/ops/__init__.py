"""The numeric building blocks of the model, behind one backend switch.

`engine.model` calls `ops.<name>(...)` and never knows which implementation runs:
- "reference" (`engine/ops/reference.py`): plain PyTorch, always available, the executable spec;
- "extension" (`engine/ops/extension.py`): C++/CUDA kernels from csrc/, built on first use.

The reference is active at import. `select_backend()` (called by `Engine.load`) switches to the
extension unless `GPTOSS_OPS=reference`; if the extension cannot be built or loaded it stays on the
reference with one warning. `use_backend()` switches explicitly (tests compare backends with it).
"""

from __future__ import annotations

import logging
import os

from engine.ops import reference

logger = logging.getLogger(__name__)

OP_NAMES = ("linear", "linear_q8", "quantize_q8_0", "rms_norm", "rope_", "sdpa_sinks", "sdpa_sinks_varlen", "mxfp4_dequantize",
            "moe_mxfp4", "moe_mxfp4_ggml")
BACKENDS = ("reference", "extension")

_active = ""


def available_backends() -> list[str]:
    return list(BACKENDS)


def active_backend() -> str:
    return _active


def cpu_kernels(dtype) -> str | None:
    """The CPU kernel family the active backend runs for work in dtype ("amx", "avx512_bf16", "avx2",
    "portable"); None on the reference backend."""
    if _active != "extension":
        return None
    from engine.ops import extension

    return extension.cpu_kernels(dtype)


def read_bandwidth(buffer, repeats: int) -> float | None:
    """Best GB/s of `repeats` reads of a contiguous CPU buffer in the access pattern of the extension's
    decode kernels (4 streams per thread); None on the reference backend."""
    if _active != "extension":
        return None
    from engine.ops import extension

    return extension.read_bandwidth(buffer, repeats)


def use_backend(name: str) -> None:
    """Routes every op of this module to the named backend.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: the extension cannot be built or loaded.
    """
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; available: {available_backends()}")
    if name == "extension":
        from engine.ops import extension

        if not extension.load():
            raise RuntimeError("the C++ ops extension could not be built or loaded (see the log)")
        implementations = extension.resolved_ops(OP_NAMES)
    else:
        implementations = {op: getattr(reference, op) for op in OP_NAMES}
    globals().update(implementations)
    if name != _active:
        logger.info("ops backend: %s", name)
    _active = name


def select_backend() -> str:
    """The extension where it works, unless GPTOSS_OPS=reference; returns the active backend."""
    wanted = os.environ.get("GPTOSS_OPS", "auto")
    if wanted not in ("auto", *BACKENDS):
        raise ValueError(f"GPTOSS_OPS must be 'auto', 'reference' or 'extension', got {wanted!r}")
    if wanted == "reference":
        use_backend("reference")
        return _active
    from engine.ops import extension

    if extension.load():
        use_backend("extension")
    elif wanted == "extension":
        raise RuntimeError("GPTOSS_OPS=extension but the C++ ops extension could not be built or loaded")
    return _active


use_backend("reference")
