"""THE checkpoint-name table: which tensors a gpt-oss checkpoint holds, in either layout.

The canonical names are the Hugging Face ones (`model.layers.N.self_attn.q_proj.weight`, ...), which
is what `engine.model` registers. The OpenAI `original/` layout is mapped onto them here and nowhere
else: renames, plus the fused `attn.qkv` tensor whose row blocks are the q, k and v projections.
MXFP4 expert tensors keep their packed form (uint8 blocks + E8M0 scales) in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from engine.checkpoint import CheckpointError, SafetensorsCheckpoint
from engine.config import ModelConfig

Layout = Literal["hf", "original"]
# How a tensor is held in memory: "dense" in the compute dtype, "small" always in float32 (norm
# scales, biases, sinks, router: tiny, and precision matters), "packed" as the uint8 MXFP4 bytes.
Kind = Literal["dense", "small", "packed"]


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling
    kind: Kind


# canonical (HF) name  ->  original name, or (fused original name, part) for the q/k/v row blocks.
_LAYER_TABLE: dict[str, str | tuple[str, str]] = {
    "input_layernorm.weight": "attn.norm.scale",
    "self_attn.q_proj.weight": ("attn.qkv.weight", "q"),
    "self_attn.k_proj.weight": ("attn.qkv.weight", "k"),
    "self_attn.v_proj.weight": ("attn.qkv.weight", "v"),
    "self_attn.q_proj.bias": ("attn.qkv.bias", "q"),
    "self_attn.k_proj.bias": ("attn.qkv.bias", "k"),
    "self_attn.v_proj.bias": ("attn.qkv.bias", "v"),
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.o_proj.bias": "attn.out.bias",
    "self_attn.sinks": "attn.sinks",
    "post_attention_layernorm.weight": "mlp.norm.scale",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias",
    "mlp.experts.gate_up_proj_blocks": "mlp.mlp1_weight.blocks",
    "mlp.experts.gate_up_proj_scales": "mlp.mlp1_weight.scales",
    "mlp.experts.gate_up_proj_bias": "mlp.mlp1_bias",
    "mlp.experts.down_proj_blocks": "mlp.mlp2_weight.blocks",
    "mlp.experts.down_proj_scales": "mlp.mlp2_weight.scales",
    "mlp.experts.down_proj_bias": "mlp.mlp2_bias",
}
_TOP_TABLE: dict[str, str] = {
    "model.embed_tokens.weight": "embedding.weight",
    "model.norm.weight": "norm.scale",
    "lm_head.weight": "unembedding.weight",
}


def canonical_specs(config: ModelConfig) -> dict[str, TensorSpec]:
    """Every tensor of the model under its canonical (HF) name, with shape, file dtype and kind."""
    D, V, E, I = config.hidden_size, config.vocab_size, config.num_local_experts, config.intermediate_size
    Q, KV, H = config.q_width, config.kv_width, config.num_attention_heads

    def bf16(*shape: int, kind: Kind = "small") -> TensorSpec:
        return TensorSpec(shape, "BF16", kind)

    def u8(*shape: int) -> TensorSpec:
        return TensorSpec(shape, "U8", "packed")

    per_layer = {
        "input_layernorm.weight": bf16(D),
        "self_attn.q_proj.weight": bf16(Q, D, kind="dense"), "self_attn.q_proj.bias": bf16(Q),
        "self_attn.k_proj.weight": bf16(KV, D, kind="dense"), "self_attn.k_proj.bias": bf16(KV),
        "self_attn.v_proj.weight": bf16(KV, D, kind="dense"), "self_attn.v_proj.bias": bf16(KV),
        "self_attn.o_proj.weight": bf16(D, Q, kind="dense"), "self_attn.o_proj.bias": bf16(D),
        "self_attn.sinks": bf16(H),
        "post_attention_layernorm.weight": bf16(D),
        "mlp.router.weight": bf16(E, D), "mlp.router.bias": bf16(E),
        # MXFP4: the contraction axis is split into blocks of 32 values = 16 bytes, one scale each.
        "mlp.experts.gate_up_proj_blocks": u8(E, 2 * I, D // 32, 16),
        "mlp.experts.gate_up_proj_scales": u8(E, 2 * I, D // 32),
        "mlp.experts.gate_up_proj_bias": bf16(E, 2 * I),
        "mlp.experts.down_proj_blocks": u8(E, D, I // 32, 16),
        "mlp.experts.down_proj_scales": u8(E, D, I // 32),
        "mlp.experts.down_proj_bias": bf16(E, D),
    }
    assert per_layer.keys() == _LAYER_TABLE.keys()
    specs = {"model.embed_tokens.weight": bf16(V, D, kind="dense")}
    for n in range(config.num_hidden_layers):
        specs.update({f"model.layers.{n}.{suffix}": spec for suffix, spec in per_layer.items()})
    specs["model.norm.weight"] = bf16(D)
    specs["lm_head.weight"] = bf16(V, D, kind="dense")
    return specs


def original_name(canonical: str) -> str | tuple[str, str]:
    """Where the OpenAI `original/` layout stores a canonical tensor (a name, or a fused part)."""
    if canonical in _TOP_TABLE:
        return _TOP_TABLE[canonical]
    _, _, n, suffix = canonical.split(".", 3)  # model.layers.{n}.{suffix}
    match _LAYER_TABLE[suffix]:
        case (fused, part):
            return f"block.{n}.{fused}", part
        case name:
            return f"block.{n}.{name}"


def file_specs(config: ModelConfig, layout: Layout) -> dict[str, TensorSpec]:
    """The tensors a checkpoint file set of this layout must hold, exactly."""
    canonical = canonical_specs(config)
    if layout == "hf":
        return canonical
    specs: dict[str, TensorSpec] = {}
    for name, spec in canonical.items():
        match original_name(name):
            case (fused, _):
                rows = spec.shape[0] + specs[fused].shape[0] if fused in specs else spec.shape[0]
                specs[fused] = TensorSpec((rows, *spec.shape[1:]), spec.dtype, spec.kind)
            case other:
                specs[other] = spec
    return specs


def detect_layout(ckpt: SafetensorsCheckpoint) -> Layout:
    if "lm_head.weight" in ckpt or "model.embed_tokens.weight" in ckpt:
        return "hf"
    if "unembedding.weight" in ckpt or "embedding.weight" in ckpt:
        return "original"
    raise CheckpointError(f"{ckpt.directory}: neither a Hugging Face layout (no 'lm_head.weight') nor "
                          f"an OpenAI original layout (no 'unembedding.weight')")


def read_weights(ckpt: SafetensorsCheckpoint, config: ModelConfig) -> dict[str, torch.Tensor]:
    """All model tensors under canonical names, as zero-copy views of the mapped checkpoint.

    Raises:
        CheckpointError: one message listing every missing, unexpected, mis-shaped or mis-typed tensor.
    """
    layout = detect_layout(ckpt)
    _check_complete(ckpt, file_specs(config, layout))
    if layout == "hf":
        return {name: ckpt.get(name) for name in canonical_specs(config)}
    parts = {"q": (0, config.q_width), "k": (config.q_width, config.kv_width),
             "v": (config.q_width + config.kv_width, config.kv_width)}
    tensors = {}
    for name in canonical_specs(config):
        match original_name(name):
            case (fused, part):
                start, rows = parts[part]
                tensors[name] = ckpt.get(fused).narrow(0, start, rows)
            case other:
                tensors[name] = ckpt.get(other)
    return tensors


def _check_complete(ckpt: SafetensorsCheckpoint, specs: dict[str, TensorSpec]) -> None:
    problems = []
    missing = [name for name in specs if name not in ckpt]
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    unexpected = [f"{name} (in {ckpt.info(name).file.name})" for name in ckpt.names() if name not in specs]
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    for name, spec in specs.items():
        if name not in ckpt:
            continue
        info = ckpt.info(name)
        if info.shape != spec.shape:
            why = ""
            if name.endswith(("_scales", ".scales")):
                why = " (MXFP4 scales need one byte per 32-value block of the matching blocks tensor)"
            elif name.endswith(("_blocks", ".blocks")):
                why = " (MXFP4 blocks are [experts, rows, blocks of 32 values, 16 bytes])"
            problems.append(f"{info.file.name}: tensor {name!r} has shape {list(info.shape)}, expected "
                            f"{list(spec.shape)}{why}")
        if info.dtype != spec.dtype:
            problems.append(f"{info.file.name}: tensor {name!r} has dtype {info.dtype}, expected {spec.dtype}")
    if problems:
        raise CheckpointError(f"{ckpt.directory}: checkpoint does not match its config:\n  "
                              + "\n  ".join(problems))


def parameter_count(config: ModelConfig) -> int:
    """Model parameters: dense tensors plus two FP4 values per packed byte (scales are encoding)."""
    total = 0
    for name, spec in canonical_specs(config).items():
        numel = 1
        for dim in spec.shape:
            numel *= dim
        if spec.kind == "packed":
            total += 2 * numel if name.endswith("_blocks") else 0
        else:
            total += numel
    return total


def decode_bytes_per_token(config: ModelConfig, int8: bool = False) -> int:
    """Weight bytes one decoded token reads at batch 1: every dense tensor, one embedding row, and
    the packed bytes and biases of the experts_per_token experts it is routed to in each layer.
    With `int8`, attention and unembedding weights count a byte per value plus a float16 scale per 32."""
    total = 0
    for name, spec in canonical_specs(config).items():
        numel = 1
        for dim in spec.shape:
            numel *= dim
        nbytes = numel * (2 if spec.dtype == "BF16" else 1)
        quantized = name == "lm_head.weight" or (".self_attn." in name and name.endswith("_proj.weight"))
        if int8 and quantized:  # what weights="int8" stores in Q8_0
            nbytes = numel + numel // 16
        if name == "model.embed_tokens.weight":
            total += 2 * config.hidden_size
        elif ".mlp.experts." in name:
            total += nbytes * config.num_experts_per_tok // config.num_local_experts
        else:
            total += nbytes
    return total
