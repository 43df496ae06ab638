"""gpt-oss inference engine: checkpoint loading, the model, harmony chat, generation, embeddings.

Public API only; everything else is an implementation detail of the modules below. The names are
imported on first use, so `import engine` (and any torch-free submodule) does not import torch:
the MCP server answers its first message before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "Generation": "engine.chat", "GenerationParams": "engine.chat", "GenerationResult": "engine.chat",
    "GenerationStep": "engine.chat", "Usage": "engine.chat",
    "ConfigError": "engine.config", "ModelConfig": "engine.config",
    "Engine": "engine.engine", "EngineOptions": "engine.engine",
    "REASONING_EFFORTS": "engine.harmony",
    "ChatMessage": "engine.messages", "FunctionTool": "engine.messages", "ToolCall": "engine.messages",
    "ContextLimitError": "engine.kv_cache", "KVMemoryError": "engine.kv_cache",
    "CheckpointError": "engine.shard_headers",
    "TokenizerError": "engine.tokenizer",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from engine.chat import Generation, GenerationParams, GenerationResult, GenerationStep, Usage
    from engine.config import ConfigError, ModelConfig
    from engine.engine import Engine, EngineOptions
    from engine.harmony import REASONING_EFFORTS
    from engine.kv_cache import ContextLimitError, KVMemoryError
    from engine.messages import ChatMessage, FunctionTool, ToolCall
    from engine.shard_headers import CheckpointError
    from engine.tokenizer import TokenizerError


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
