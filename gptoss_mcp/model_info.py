"""What the gptoss://model resource says about the served model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.demo.skills import SKILLS as DEMO_SKILLS
from gptoss_mcp.runtime import EngineRunner
from gptoss_mcp.settings import ServerSettings

DEMO_NAME = "gpt-oss-demo"


def model_name(settings: ServerSettings) -> str:
    if settings.backend:
        return settings.backend_model or "gpt-oss"
    if settings.is_demo:
        return DEMO_NAME
    path = Path(settings.model).resolve()
    return path.parent.name if path.name == "original" else path.name


def model_info(settings: ServerSettings, runner: EngineRunner) -> dict[str, Any]:
    if settings.backend:
        return {"name": model_name(settings), "path": None, "demo": False, "state": runner.state, "config": None,
                "parameters": None, "weight_format": None, "dtype": None, "device": None, "ops_backend": "remote",
                "cpu_kernels": None, "backend": runner.describe()}
    engine = runner.engine
    info: dict[str, Any] = {
        "name": model_name(settings),
        "path": str(engine.path) if engine else (None if settings.is_demo else settings.model),
        "demo": settings.is_demo,
        "state": runner.state,
        "config": None, "parameters": None, "dtype": None, "device": None, "ops_backend": None,
        "cpu_kernels": None,
        "weight_format": "MXFP4 experts (uint8 blocks + E8M0 scales), " + (
            "int8 attention and unembedding (Q8_0: a float16 scale per 32), bfloat16 elsewhere"
            if settings.weights == "int8" else "bfloat16 elsewhere"),
    }
    if settings.is_demo:
        info["note"] = ("demo model: a small gpt-oss checkpoint (real format) trained by gptoss-mcp for the skills "
                        "below and nothing else. Serve a real checkpoint with --model PATH or --model ORG/NAME.")
        info["skills"] = DEMO_SKILLS
    if engine is not None:
        source = engine.source
        info["source"] = {"kind": "demo" if settings.is_demo else source.kind, "id": source.id,
                          "revision": source.revision, "commit": source.commit, "path": str(source.path),
                          "files": source.files}
        if source.kind == "gguf":
            info["source"]["tensor_types"] = source.tensor_types
            info["weight_format"] = "GGUF tensors by ggml type: " + ", ".join(
                f"{kind} {count}" for kind, count in sorted((source.tensor_types or {}).items()))
        config = engine.config
        info.update(
            config={"layers": config.num_hidden_layers, "experts": config.num_local_experts,
                    "experts_per_token": config.num_experts_per_tok, "context_length": engine.max_context,
                    "max_position_embeddings": config.max_position_embeddings, "vocab": config.vocab_size,
                    "hidden_size": config.hidden_size, "sliding_window": config.sliding_window},
            parameters=engine.parameter_count, dtype=engine.options.dtype, device=str(engine.device),
            ops_backend=engine.ops_backend, cpu_kernels=engine.cpu_kernels)
    return info
