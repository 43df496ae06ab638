"""The numeric building blocks of the model, behind one backend switch.

`engine.model` calls `ops.<name>(...)` and never knows which implementation runs. The "reference"
backend (`engine/ops/reference.py`) is plain PyTorch and always available; faster backends provide
the same functions with the same signatures. `GPTOSS_OPS=<backend>` picks one at start-up and
`use_backend()` switches at run time (tests use it to compare backends).
"""

from __future__ import annotations

import importlib
import logging
import os

logger = logging.getLogger(__name__)

OP_NAMES = ("linear", "rms_norm", "rope_", "sdpa_sinks", "mxfp4_dequantize", "moe_mxfp4")
_BACKEND_MODULES = {"reference": "engine.ops.reference"}

_active = ""


def available_backends() -> list[str]:
    return list(_BACKEND_MODULES)


def active_backend() -> str:
    return _active


def use_backend(name: str) -> None:
    """Routes every op of this module to the named backend.

    Raises:
        ValueError: unknown backend name.
    """
    global _active
    if name not in _BACKEND_MODULES:
        raise ValueError(f"unknown ops backend {name!r}; available: {available_backends()}")
    module = importlib.import_module(_BACKEND_MODULES[name])
    for op in OP_NAMES:
        globals()[op] = getattr(module, op)
    if name != _active:
        logger.info("ops backend: %s", name)
    _active = name


use_backend(os.environ.get("GPTOSS_OPS", "reference"))
