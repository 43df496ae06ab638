"""gpt-oss inference engine: checkpoint loading, the model, and (later) generation.

Public API only; everything else is an implementation detail of the modules below.
"""

from engine.chat import Generation, GenerationParams, GenerationResult, GenerationStep, Usage
from engine.checkpoint import CheckpointError
from engine.config import ConfigError, ModelConfig
from engine.engine import Engine, EngineOptions
from engine.harmony import REASONING_EFFORTS, ChatMessage, FunctionTool, ToolCall
from engine.kv_cache import ContextLimitError
from engine.tokenizer import TokenizerError

__all__ = [
    "REASONING_EFFORTS", "ChatMessage", "CheckpointError", "ConfigError", "ContextLimitError", "Engine",
    "EngineOptions", "FunctionTool", "Generation", "GenerationParams", "GenerationResult", "GenerationStep",
    "ModelConfig", "ToolCall", "TokenizerError", "Usage",
]
