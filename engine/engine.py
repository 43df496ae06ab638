"""The Engine facade: load a checkpoint directory, run the model. Synchronous and thread-confined:
one thread owns an Engine (the MCP server gives it a dedicated one)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import ops
from engine.checkpoint import CheckpointError, SafetensorsCheckpoint
from engine.config import ModelConfig
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.weights import canonical_specs, read_weights

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineOptions:
    """Deployment settings (as opposed to the model's own config)."""

    device: str = "cpu"
    dtype: str = "bfloat16"
    max_context: int | None = None  # None: the model's max_position_embeddings
    prefill_chunk: int = 512        # prompt tokens per forward pass; bounds activation memory

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.max_context is not None and self.max_context <= 0:
            raise ValueError(f"max_context must be positive, got {self.max_context}")
        if self.prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {self.prefill_chunk}")


class Engine:
    def __init__(self, path: Path, config: ModelConfig, model: Transformer, options: EngineOptions,
                 device: torch.device):
        self.path, self.config, self.model, self.options, self.device = path, config, model, options, device
        self.max_context = min(options.max_context or config.max_position_embeddings,
                               config.max_position_embeddings)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "bfloat16", *,
             max_context: int | None = None, prefill_chunk: int = 512) -> Engine:
        """Loads a Hugging Face-layout model directory or its `original/` subdirectory.

        Dense weights are memory-mapped (and only copied when the compute dtype or device differs
        from the file); MXFP4 expert weights stay packed.

        Raises:
            ConfigError, CheckpointError: the message names the file and field or tensor.
            ValueError: bad device or dtype.
        """
        options = EngineOptions(device=device, dtype=dtype, max_context=max_context,
                                prefill_chunk=prefill_chunk)
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: model directory not found")
        started = time.perf_counter()
        torch_device = _resolve_device(device)
        config = ModelConfig.from_file(path / "config.json")
        checkpoint = SafetensorsCheckpoint(path)
        tensors = read_weights(checkpoint, config)
        compute_dtype = _DTYPES[dtype]
        specs = canonical_specs(config)
        state = {}
        for name, tensor in tensors.items():
            kind = specs[name].kind
            target = compute_dtype if kind == "dense" else torch.float32 if kind == "small" else tensor.dtype
            # Module names are the HF keys without their "model." prefix.
            state[name.removeprefix("model.")] = tensor.to(device=torch_device, dtype=target)
        model = Transformer(config, compute_dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model.bind_device(torch_device)
        model.eval()
        logger.info("loaded %s (%d layers, %s on %s, ops %s) in %.1f s", path, config.num_hidden_layers,
                    dtype, torch_device, ops.active_backend(), time.perf_counter() - started)
        return cls(path, config, model, options, torch_device)

    def new_cache(self, batch: int = 1, max_context: int | None = None) -> KVCache:
        return KVCache(self.config, batch, self.model.dtype, self.device,
                       min(max_context or self.max_context, self.max_context))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Runs ids [B, T] after the cache's context in prefill chunks; returns hidden [B, T, D] float32."""
        chunk = self.options.prefill_chunk
        hidden = [self.model(ids[:, i:i + chunk].to(self.device), cache) for i in range(0, ids.shape[1], chunk)]
        return torch.cat(hidden, dim=1)

    @torch.inference_mode()
    def logits(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """float32 logits [len(ids), vocab_size] of one forward pass from an empty cache."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("logits() needs at least one token id")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.numel():
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})")
        cache = self.new_cache(max_context=ids.shape[1])
        return self.model.unembed(self.forward(ids, cache))[0]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return torch.device(device)
