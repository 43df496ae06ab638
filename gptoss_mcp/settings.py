"""ServerSettings: everything `gptoss-mcp serve` is configured with; the one place that reads GPTOSS_* env."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from gptoss_mcp.schemas import Effort

TRANSPORTS = ("stdio", "http", "sse")
REASONING_EFFORTS = get_args(Effort)
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerSettings:
    model: str = "demo"                 # a model directory, a Hugging Face id ORG/NAME[@REVISION], a .gguf file, or "demo"
    transport: str = "stdio"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    weights: str | None = None          # "int8": attention and unembedding in Q8_0 (Engine.load's weights)
    threads: int | None = None
    reasoning_effort: str = "medium"    # process-wide default; set_reasoning_effort changes it
    max_context: int = 8192             # tokens of prompt + reply per request (the KV cache grows to it)
    max_tokens_limit: int = 4096        # the largest max_tokens a generate call may ask for
    default_max_tokens: int = 1024
    max_embed_texts: int = 64
    max_embed_text_chars: int = 32768
    max_batch: int = 8                  # generations decoded together
    max_waiting: int = 8                # requests waiting beyond the batch before "busy"
    kv_cache_mb: int | None = None      # KV memory of running generations; None: the engine's default
    prefix_cache_mb: int | None = None  # KV kept for reuse across calls; 0 disables; None: the default
    progress_interval: float = 1.0      # seconds between progress notifications of a running call
    auth_token_file: Path | None = None
    allow_origins: tuple[str, ...] = field(default_factory=tuple)
    allow_hosts: tuple[str, ...] = field(default_factory=tuple)
    openai_api: bool = True             # /v1 and /metrics beside /mcp (HTTP transport only)
    backend: str | None = None          # a remote OpenAI-compatible server to serve from, instead of the engine
    backend_model: str | None = None    # its model id (default: the first it lists)
    backend_api_key_file: Path | None = None
    backend_embeddings_url: str | None = None
    backend_timeout: float = 120.0      # seconds the backend may stay silent
    backend_retries: int = 3            # retries of 429 / 503 / connection failures

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {self.reasoning_effort!r}")
        for name in ("max_context", "max_tokens_limit", "default_max_tokens", "max_embed_texts",
                     "max_embed_text_chars", "port", "max_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.progress_interval <= 2:
            raise ValueError(f"progress_interval must be in (0, 2] seconds, got {self.progress_interval}")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ValueError(f"kv_cache_mb must be positive, got {self.kv_cache_mb}")
        if self.prefix_cache_mb is not None and self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0 (0 disables it), got {self.prefix_cache_mb}")
        if self.backend_timeout <= 0 or self.backend_retries < 0:
            raise ValueError(f"backend_timeout must be positive and backend_retries >= 0, got "
                             f"{self.backend_timeout} and {self.backend_retries}")
        if self.backend is None and (self.backend_model or self.backend_api_key_file or self.backend_embeddings_url):
            raise ValueError("--backend-model, --backend-api-key-file and --backend-embeddings-url need --backend URL")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.default_max_tokens > self.max_tokens_limit:
            object.__setattr__(self, "default_max_tokens", self.max_tokens_limit)
        if self.transport != "stdio" and not is_loopback(self.host) and self.auth_token_file is None:
            raise ValueError(f"refusing to serve on {self.host}, which is not a loopback address, without "
                             f"authentication: pass --auth-token-file (or bind 127.0.0.1)")

    @property
    def serves_openai_api(self) -> bool:
        return self.openai_api and self.transport == "http"

    @property
    def is_demo(self) -> bool:
        return self.model == "demo"

    @staticmethod
    def model_from_env() -> str:
        return os.environ.get("GPTOSS_MODEL") or "demo"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
