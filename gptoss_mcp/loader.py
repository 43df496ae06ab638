"""Builds the Engine the server serves (on the engine thread, in the background)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine import Engine
from gptoss_mcp.demo import demo_model_dir
from gptoss_mcp.settings import ServerSettings


def load_engine(settings: ServerSettings, report: Callable[[float], None]) -> Engine:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    path = demo_model_dir() if settings.is_demo else Path(settings.model).expanduser()
    report(0.2)
    engine = Engine.load(path, device=settings.device, dtype="bfloat16" if settings.dtype == "auto" else settings.dtype,
                         max_context=settings.max_context)
    report(0.7)
    engine.harmony  # noqa: B018 - tokenizer and chat format now, not in the first request
    return engine
