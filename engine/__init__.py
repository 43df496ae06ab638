"""gpt-oss inference engine: checkpoint loading, the model, and (later) generation.

Public API only; everything else is an implementation detail of the modules below.
"""

from engine.checkpoint import CheckpointError
from engine.config import ConfigError, ModelConfig
from engine.engine import Engine, EngineOptions
from engine.kv_cache import ContextLimitError

__all__ = ["CheckpointError", "ConfigError", "ContextLimitError", "Engine", "EngineOptions", "ModelConfig"]
