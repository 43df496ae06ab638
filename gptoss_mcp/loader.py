"""Builds the Engine the server serves (on the engine thread, in the background)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine import Engine
from gptoss_mcp.demo import model_to_load
from gptoss_mcp.settings import ServerSettings


# Engine.load's steps: the share of the load done when each begins, and what a host is told.
_ENGINE_STEPS = {"ops": (0.2, "loading the C++ ops (compiled on the first start: about a minute)"),
                 "weights": (0.5, "mapping the weights")}


def load_engine(settings: ServerSettings, report: Callable[[float, str], None]) -> Engine:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.is_demo:
        report(0.1, "preparing the demo model (built on the first start: a few seconds)")
    # A directory or a Hugging Face id: Engine.load resolves it, and engine.source says which it was.
    engine = Engine.load(model_to_load(settings.model), device=settings.device,
                         dtype="bfloat16" if settings.dtype == "auto" else settings.dtype,
                         max_context=settings.max_context, kv_cache_mb=settings.kv_cache_mb,
                         prefix_cache_mb=settings.prefix_cache_mb, weights=settings.weights,
                         on_step=lambda step: report(*_ENGINE_STEPS[step]))
    report(0.7, "loading the tokenizer")
    engine.harmony  # noqa: B018 - tokenizer and chat format now, not in the first request
    return engine
