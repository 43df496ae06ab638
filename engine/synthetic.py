"""Random gpt-oss checkpoints in the exact on-disk format of a real download.

`write_model` produces a Hugging Face-layout directory (config.json, generation_config.json,
sharded safetensors + index, MXFP4 experts, bf16 rest, tokenizer files) and the same weights again in
the OpenAI `original/` layout. Tests and benchmarks run on these; the text such a model writes is
gibberish by construction. `write_checkpoint` writes the same layout from given tensors (the trained
demo model, engine.demo.package).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine import o200k
from engine.config import ModelConfig
from engine.presets import preset_config
from engine.shard_writer import PlannedTensor, ShardedWriter
from engine.weights import canonical_specs, file_specs, original_name

logger = logging.getLogger(__name__)

_FP4_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)  # of a uniformly random nibble

# Shard sizes like the real repositories' (~4.8 GB) for the big shapes; small ones still get several
# shards so that the index is exercised.
_MAX_SHARD_BYTES = {"20b-shape": 4_800_000_000, "120b-shape": 4_800_000_000}
_SMALL_SHARD_BYTES = 16_000_000

GENERATION_CONFIG = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012],
                     "pad_token_id": 199999}


def write_model(out: str | Path, preset: str = "tiny", layers: int | None = None, seed: int = 0,
                original: bool = True, config: ModelConfig | None = None) -> ModelConfig:
    """Writes a random model directory (and its `original/` twin unless original=False), of the preset's
    shape or of `config` when given (tests that need another shape).

    The same (preset or config, layers, seed) always gives byte-identical weights.
    """
    config = config or preset_config(preset, layers)
    generator = torch.Generator().manual_seed(seed)
    specs = canonical_specs(config)
    write_checkpoint(out, config, lambda name: _random_tensor(name, specs[name].shape, config, generator),
                     readme=f"# Random gpt-oss checkpoint ({preset}, {config.num_hidden_layers} layers, seed {seed})\n\n"
                            "Written by `gptoss-mcp make-model` in the real gpt-oss on-disk format with random weights.\n"
                            "Its text is gibberish by construction.\n",
                     max_shard_bytes=_MAX_SHARD_BYTES.get(preset, _SMALL_SHARD_BYTES), original=original)
    return config


def write_checkpoint(out: str | Path, config: ModelConfig, tensor_for: Callable[[str], torch.Tensor], readme: str,
                     max_shard_bytes: int, original: bool = False) -> None:
    """Writes a model directory in the real layout with the tensors `tensor_for(canonical name)` gives
    (asked one layer at a time, in file order), and its `original/` twin when asked."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hf_specs = canonical_specs(config)
    hf = ShardedWriter(out, [PlannedTensor(n, s.shape, s.dtype) for n, s in hf_specs.items()],
                       lambda i, n: f"model-{i:05d}-of-{n - 1:05d}.safetensors",  # sic: as the real repo
                       max_shard_bytes)
    writers = [(hf, None)]
    if original:
        orig_specs = file_specs(config, "original")
        planned = [PlannedTensor(n, s.shape, s.dtype) for n, s in orig_specs.items()]
        sharded = sum(t.nbytes for t in planned) > max_shard_bytes
        orig = ShardedWriter(out / "original", planned,
                             (lambda i, n: f"model--{i + 1:05d}-of-{n:05d}.safetensors") if sharded
                             else (lambda i, n: "model.safetensors"),
                             max_shard_bytes, write_index=sharded)
        writers.append((orig, _original_parts(hf_specs)))
        (out / "original" / "config.json").write_text(json.dumps(config.to_original_dict(), indent=2) + "\n")
        (out / "original" / "dtypes.json").write_text(json.dumps(
            {n: {"U8": "UE8" if n.endswith("scales") else "FP4"}.get(s.dtype, s.dtype)
             for n, s in orig_specs.items()}, indent=2) + "\n")

    for group in _tensor_groups(config):
        tensors = {name: tensor_for(name) for name in group}
        for writer, parts in writers:
            _write_group(writer, parts, tensors)
    for writer, _ in writers:
        writer.close()

    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    o200k.write_tokenizer_files(out)
    (out / "README.md").write_text(readme)
    logger.info("wrote %s (%d layers) in %.1f s", out, config.num_hidden_layers, time.perf_counter() - started)


def _tensor_groups(config: ModelConfig) -> list[list[str]]:
    # One layer at a time bounds memory; the HF and original files get tensors in the same groups.
    names = list(canonical_specs(config))
    groups = [["model.embed_tokens.weight"]]
    for n in range(config.num_hidden_layers):
        groups.append([name for name in names if name.startswith(f"model.layers.{n}.")])
    groups.append(["model.norm.weight", "lm_head.weight"])
    return groups


def _original_parts(hf_specs) -> dict[str, list[str]]:
    """original name -> the canonical tensors it is made of (several for the fused qkv)."""
    parts: dict[str, list[str]] = {}
    for name in hf_specs:
        match original_name(name):
            case (fused, _):
                parts.setdefault(fused, []).append(name)
            case other:
                parts[other] = [name]
    return parts


def _write_group(writer: ShardedWriter, parts: dict[str, list[str]] | None, tensors: dict[str, torch.Tensor]):
    if parts is None:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        return
    for original, members in parts.items():
        if members[0] in tensors:
            writer.write(original, torch.cat([tensors[m] for m in members]) if len(members) > 1
                         else tensors[members[0]])


def _random_tensor(name: str, shape: tuple[int, ...], config: ModelConfig, g: torch.Generator) -> torch.Tensor:
    """Random values scaled like a trained model's: unit-RMS activations, routers that spread tokens
    over experts, logits of magnitude ~10, MXFP4 blocks using the whole FP4 range."""

    def normal(std: float, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * std + mean).to(torch.bfloat16)

    if name.endswith("_blocks"):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if name.endswith("_scales"):
        fan_in = shape[-1] * 32
        exponent = 127 + round(math.log2(1 / (_FP4_RMS * math.sqrt(fan_in))))
        return (exponent + torch.randint(-1, 2, shape, generator=g)).to(torch.uint8)
    if name.endswith("norm.weight"):
        return normal(0.1, mean=1.0)
    if name.endswith("sinks"):
        return normal(1.0)
    if name.endswith("bias"):
        return normal(0.1)
    if name == "model.embed_tokens.weight":
        return normal(1.0)
    if name == "lm_head.weight":
        return normal(4.0 / math.sqrt(shape[1]))
    return normal(1.0 / math.sqrt(shape[1]))  # projections and router: unit-RMS outputs
