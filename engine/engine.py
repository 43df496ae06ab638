"""The Engine facade: load a checkpoint directory, run the model. Synchronous and thread-confined:
one thread owns an Engine (the MCP server gives it a dedicated one)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine import ops
from engine.chat import Generation, GenerationParams, GenerationStep
from engine.checkpoint import SafetensorsCheckpoint
from engine.config import ModelConfig
from engine.embed import embed_token_lists
from engine.harmony import HarmonyFormat
from engine.int8 import drop_pages, split_ggml_q8_0
from engine.messages import ChatMessage, FunctionTool
from engine.model_source import ModelSource, directory_source, resolve_model
from engine.kv_cache import ContextLimitError, KVCache
from engine.model import Transformer
from engine.memory import default_kv_budget_bytes, default_prefix_cache_mb
from engine.prefix_cache import PrefixCache
from engine.reply_constraint import grammar_tokenizer
from engine.scheduler import Request, Scheduler
from engine.structured_output import ResponseFormat
from engine.tokenizer import Tokenizer
from engine.weights import canonical_specs, parameter_count, read_weights

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineOptions:
    """Deployment settings (as opposed to the model's own config)."""

    device: str = "cpu"
    dtype: str = "bfloat16"
    max_context: int | None = None  # None: the model's max_position_embeddings
    prefill_chunk: int = 512        # prompt tokens per forward pass; bounds activation memory
    embed_batch_tokens: int = 4096  # padded tokens per embedding forward pass
    weights: str | None = None          # "int8": attention and unembedding in Q8_0; None / "bf16": as stored
    kv_cache_mb: int | None = None      # KV memory of running sequences; None: a share of the machine's
    prefix_cache_mb: int | None = None  # KV kept for reuse across requests; 0 disables; None: default

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.max_context is not None and self.max_context <= 0:
            raise ValueError(f"max_context must be positive, got {self.max_context}")
        if self.weights not in (None, "bf16", "int8"):
            raise ValueError(f"weights must be 'bf16' or 'int8', got {self.weights!r}")
        if self.prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {self.prefill_chunk}")
        if self.embed_batch_tokens <= 0:
            raise ValueError(f"embed_batch_tokens must be positive, got {self.embed_batch_tokens}")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ValueError(f"kv_cache_mb must be positive, got {self.kv_cache_mb}")
        if self.prefix_cache_mb is not None and self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0 (0 disables the prefix cache), got {self.prefix_cache_mb}")


class Engine:
    def __init__(self, path: Path, config: ModelConfig, model: Transformer, options: EngineOptions,
                 device: torch.device, source: ModelSource | None = None):
        self.path, self.config, self.model, self.options, self.device = path, config, model, options, device
        self.source = source or directory_source(path)  # what --model named, for the server to report
        self.max_context = min(options.max_context or config.max_position_embeddings,
                               config.max_position_embeddings)
        self.kv_budget_bytes = (options.kv_cache_mb << 20 if options.kv_cache_mb is not None
                                else default_kv_budget_bytes(device))
        prefix_mb = options.prefix_cache_mb if options.prefix_cache_mb is not None else default_prefix_cache_mb()
        self.prefix_cache = PrefixCache(prefix_mb << 20)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "bfloat16", *,
             max_context: int | None = None, prefill_chunk: int = 512, embed_batch_tokens: int = 4096,
             kv_cache_mb: int | None = None, prefix_cache_mb: int | None = None, weights: str | None = None,
             on_step: Callable[[str], None] | None = None) -> Engine:
        """Loads a Hugging Face-layout model directory or its `original/` subdirectory, a gpt-oss GGUF
        file (llama.cpp's; one file or any of a set of split files), or a Hugging Face id
        `ORG/NAME[@REVISION]` from the local Hugging Face cache (`engine.model_source`; an existing
        directory of that name wins). `engine.source` tells which.

        Dense weights are memory-mapped (and only copied when the compute dtype or device differs
        from the file); MXFP4 expert weights stay packed, a GGUF's in ggml's layout, read in place by
        the CPU kernels (rewritten into the Hugging Face layout on a GPU, losslessly). A GGUF's Q8_0
        tensors stay 8-bit whatever `weights` says: attention and unembedding as with
        `weights="int8"`, the embedding decoded row by row as it is looked up.
        `on_step` is told each step as it begins:
        "ops" (loads the C++ ops, compiled on a machine's first start) and "weights".
        `kv_cache_mb` bounds the KV memory of running sequences (default: a quarter of the machine's
        memory, or three quarters of the GPU's free memory); `prefix_cache_mb` the KV kept for reuse across
        requests (default: 1 GiB or an eighth of the memory, whichever is less; 0 disables).
        `weights="int8"` quantizes the attention projections and the unembedding to 8 bits at load
        (llama.cpp's Q8_0: a float16 scale per 32 values); the MXFP4 experts are unchanged.

        Raises:
            ConfigError, CheckpointError: the message names the file and field or tensor (for an id
                missing from the cache, the `gptoss-mcp pull` command that fetches it).
            TokenizerError: a GGUF whose vocabulary is not o200k_harmony's.
            ValueError: bad device or dtype.
        """
        options = EngineOptions(device=device, dtype=dtype, max_context=max_context,
                                prefill_chunk=prefill_chunk, embed_batch_tokens=embed_batch_tokens,
                                kv_cache_mb=kv_cache_mb, prefix_cache_mb=prefix_cache_mb, weights=weights)
        source = resolve_model(path)
        path = source.path
        started = time.perf_counter()
        on_step = on_step or (lambda step: None)
        on_step("ops")
        ops.select_backend()
        on_step("weights")
        torch_device = _resolve_device(device)
        ggml_experts: dict[str, torch.Tensor] = {}
        if source.kind == "gguf":
            from engine.gguf_checkpoint import GGUFCheckpoint, hf_layout_experts  # imports llama.cpp's gguf

            checkpoint = GGUFCheckpoint([path.parent / name for name in source.files])
            config = checkpoint.config
            tensors, q8_0, ggml_experts = checkpoint.read_weights()
            if torch_device.type != "cpu":  # the GPU kernels read the Hugging Face layout
                tensors.update(hf_layout_experts(ggml_experts, torch_device))
                ggml_experts = {}
            source = replace(source, tensor_types=checkpoint.tensor_types)
        else:
            config = ModelConfig.from_file(path / "config.json")
            tensors, q8_0 = read_weights(SafetensorsCheckpoint(path), config), {}
        compute_dtype = _DTYPES[dtype]
        specs = canonical_specs(config)
        state = {}
        for name, tensor in tensors.items():
            kind = specs[name].kind
            target = compute_dtype if kind == "dense" else torch.float32 if kind == "small" else tensor.dtype
            # Module names are the HF keys without their "model." prefix.
            state[name.removeprefix("model.")] = tensor.to(device=torch_device, dtype=target)
        model = Transformer(config, compute_dtype)
        if ggml_experts:  # read in place by the CPU kernels (engine.model.GgmlMLPExperts)
            model.use_ggml_experts_()
            state.update({name.removeprefix("model."): tensor for name, tensor in ggml_experts.items()})
        q8_modules = {name.removeprefix("model.").removesuffix(".weight"): blocks for name, blocks in q8_0.items()}
        model.use_q8_0_(q8_modules)
        for module, blocks in q8_modules.items():
            for key, value in _q8_0_state(module, blocks).items():
                state[f"{module}.{key}"] = value.to(torch_device)
        model.load_state_dict(state, strict=True, assign=True)
        if weights == "int8":
            mapped = torch_device.type == "cpu" and all(
                t.dtype == compute_dtype for n, t in tensors.items() if specs[n].kind == "dense")
            model.quantize_dense_(originals_mapped=mapped)
        model.bind_device(torch_device)
        model.eval()
        engine = cls(path, config, model, options, torch_device, source)
        kernels = f", CPU kernels {engine.cpu_kernels}" if engine.cpu_kernels else ""
        precision = f"{dtype}, int8 attention and unembedding" if weights == "int8" else dtype
        if q8_0:
            precision += f" + {len(q8_0)} Q8_0 tensors of the GGUF"
        logger.info("loaded %s (%d layers, %s on %s, ops %s%s) in %.1f s", path, config.num_hidden_layers,
                    precision, torch_device, ops.active_backend(), kernels, time.perf_counter() - started)
        return engine

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.config)

    @property
    def ops_backend(self) -> str:
        return ops.active_backend()

    @property
    def cpu_kernels(self) -> str | None:
        """The CPU kernel family of the extension for the compute dtype; None off the CPU or on the
        reference ops."""
        return ops.cpu_kernels(self.model.dtype) if self.device.type == "cpu" else None

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

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """o200k_harmony from the model directory's tokenizer.json (its parent's, for original/); for a
        GGUF, whose vocabulary was checked at load to be o200k_harmony's, the bundled o200k ranks."""
        if self.source.kind == "gguf":
            return Tokenizer.o200k_harmony(self.config.vocab_size)
        candidates = [self.path / "tokenizer.json", self.path.parent / "tokenizer.json"]
        found = next((p for p in candidates if p.is_file()), candidates[0])
        return Tokenizer(found, self.config.vocab_size)

    @functools.cached_property
    def harmony(self) -> HarmonyFormat:
        return HarmonyFormat(self.tokenizer)

    @functools.cached_property
    def grammar_tokenizer(self):
        """llguidance's view of the vocabulary, for structured output; built on first use (~2 s)."""
        return grammar_tokenizer(self.tokenizer)

    def render(self, messages: Iterable[ChatMessage | Mapping[str, Any]], reasoning_effort: str = "medium",
               instructions: str | None = None, tools: Iterable[FunctionTool | Mapping[str, Any]] = (),
               current_date: str | None = None, response_format: ResponseFormat | None = None) -> list[int]:
        """The harmony prompt ids for the assistant's next turn (ends with `<|start|>assistant`)."""
        return self.harmony.render(messages, reasoning_effort, instructions, tools, current_date, response_format)

    def prompt_for(self, messages: Iterable[ChatMessage | Mapping[str, Any]],
                   params: GenerationParams) -> tuple[list[int], int]:
        """The prompt ids for a reply with these params, and the most tokens that reply may have.

        Raises:
            ContextLimitError: the prompt leaves no room for a reply (message gives both numbers).
            ValueError: bad messages.
        """
        prompt = self.render(messages, params.reasoning_effort, params.instructions, params.tools,
                             params.current_date, params.response_format)
        if len(prompt) >= self.max_context:
            raise ContextLimitError(f"the prompt has {len(prompt)} tokens but the context limit is "
                                    f"{self.max_context} (and the reply needs at least one more)")
        return prompt, min(params.max_tokens, self.max_context - len(prompt))

    def generate(self, messages: Iterable[ChatMessage | Mapping[str, Any]], params: GenerationParams | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> Generation:
        """Streams the assistant's reply as GenerationStep items; `.result` holds the GenerationResult.

        `should_cancel` is polled before every token; when it returns True generation ends with
        finish_reason "cancelled".

        Raises:
            ContextLimitError: the prompt leaves no room for a reply (message gives both numbers).
            ValueError: bad messages or params.
        """
        params = params or GenerationParams()
        made: list[GenerationStep] = []
        request = Request(messages, params, on_step=made.append, should_cancel=should_cancel)
        scheduler = Scheduler(self, max_batch=1)
        scheduler.submit(request)
        return Generation(scheduler, request, made)

    def embed(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """float32 [len(texts), hidden_size]: mean of final-normed hidden states over each text's tokens.

        Raises:
            ValueError: no texts, an empty text, or a text longer than the context limit (names which).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("embed() needs a non-empty list of texts")
        token_lists = self.tokenizer.encode_batch(list(texts))
        for i, (text, ids) in enumerate(zip(texts, token_lists)):
            if not text or not ids:
                raise ValueError(f"texts[{i}] is empty")
            if len(ids) > self.max_context:
                raise ValueError(f"texts[{i}] has {len(ids)} tokens but the limit is {self.max_context}")

        @torch.inference_mode()
        def forward(ids: torch.Tensor) -> torch.Tensor:
            return self.forward(ids, self.new_cache(batch=ids.shape[0], max_context=ids.shape[1]))

        return embed_token_lists(forward, token_lists, normalize, self.options.embed_batch_tokens)


def _q8_0_state(module: str, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers of a Q8_0 module (engine.model.use_q8_0_) from ggml's Q8_0 blocks [rows, in/32, 34]."""
    if module == "embed_tokens":  # looked up by rows: keeps the file's blocks, mapped
        return {"blocks": blocks}
    qweight, scales = split_ggml_q8_0(blocks)  # the layout of the Q8_0 kernel, a copy
    drop_pages(blocks)  # the mapped file pages are not needed any more
    return {"qweight": qweight, "scales": scales}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return torch.device(device)
