"""The gpt-oss transformer, top to bottom, calling `engine.ops` for every numeric building block.

Shape legend: B batch, T new tokens, D hidden size, H query heads, K kv heads, Dh head dim,
N = B·T tokens, E experts, A experts per token, V vocabulary.

Module attribute names equal the Hugging Face checkpoint keys without their leading "model.", so
`state_dict()` lines up with `engine.weights.canonical_specs`.

Precision: dense weights are in the compute dtype (bfloat16 or float32); norm scales, biases,
sinks and the router are float32; the residual stream, attention and SwiGLU run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from engine import ops
from engine.config import ModelConfig, yarn_correction_range
from engine.int8 import GGML_Q8_0_BYTES, Q8_BLOCK, dequantize_ggml_q8_0, drop_pages
from engine.kv_cache import KVCache


def _buffer(module: nn.Module, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> None:
    # Built on the meta device; the loader assigns the real (memory-mapped) tensors.
    module.register_buffer(name, torch.empty(*shape, dtype=dtype, device="meta"))


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, bias: bool = True):
        super().__init__()
        _buffer(self, "weight", out_features, in_features, dtype=dtype)
        if bias:
            _buffer(self, "bias", out_features)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


class Q8Linear(nn.Module):
    """Linear with its weight in Q8_0's layout (engine.int8): int8 values, a float16 scale per 32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        _buffer(self, "qweight", out_features, in_features, dtype=torch.int8)
        _buffer(self, "scales", out_features, in_features // Q8_BLOCK, dtype=torch.float16)
        if bias:
            _buffer(self, "bias", out_features)
        else:
            self.bias = None

    @classmethod
    def quantize(cls, linear: Linear) -> Q8Linear:
        """The Q8_0 rounding of a loaded Linear (weights="int8")."""
        out_features, in_features = linear.weight.shape
        module = cls(in_features, out_features, bias=linear.bias is not None)
        module.qweight, module.scales = ops.quantize_q8_0(linear.weight)
        module.bias = linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear_q8(x, self.qweight, self.scales, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        _buffer(self, "weight", dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding:
    """RoPE with YaRN (Peng et al. 2023, arXiv:2309.00071): static frequencies, unrounded ramp,
    cos/sin scaled by the attention factor c = 0.1·ln(factor) + 1. The table grows on demand."""

    def __init__(self, config: ModelConfig, device: torch.device):
        d, yarn = config.head_dim, config.rope_scaling
        freq = config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        extrapolation, interpolation = 1.0 / freq, 1.0 / (yarn.factor * freq)
        if yarn.factor > 1:
            low, high = yarn_correction_range(config)
            ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
            keep = 1 - ramp  # share of the original (extrapolated) frequency, as the references do
            self.inv_freq = interpolation * (1 - keep) + extrapolation * keep
            self.attention_factor = 0.1 * math.log(yarn.factor) + 1.0
        else:
            self.inv_freq, self.attention_factor = extrapolation, 1.0
        self.inv_freq = self.inv_freq.to(device)
        self._table = torch.empty(0, d, device=device)

    def cos_sin(self, positions: int) -> torch.Tensor:
        """[≥positions, Dh] float32: c·cos(p·ω) then c·sin(p·ω) for p = 0, 1, ..."""
        if self._table.shape[0] < positions:
            rows = max(positions, 2 * self._table.shape[0], 256)
            p = torch.arange(rows, dtype=torch.float32, device=self.inv_freq.device)
            phase = torch.outer(p, self.inv_freq)  # fp32 products p·ω, like the references
            self._table = torch.cat((phase.cos(), phase.sin()), dim=-1) * self.attention_factor
        return self._table


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype):
        super().__init__()
        D, Dh = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, Dh
        self.window = config.window_of(layer)
        self.sm_scale = 1.0 / math.sqrt(Dh)
        self.q_proj = Linear(D, config.q_width, dtype)
        self.k_proj = Linear(D, config.kv_width, dtype)
        self.v_proj = Linear(D, config.kv_width, dtype)
        self.o_proj = Linear(config.q_width, D, dtype)
        _buffer(self, "sinks", self.heads)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, caches: list, lengths: list[int],
                rope: RotaryEmbedding) -> torch.Tensor:
        """h [B, T, D]: the new tokens of len(caches) sequences back to back (lengths, summing to T;
        several sequences come with B == 1), positions [T] each token's own; one layer cache each."""
        B, T, _ = h.shape
        q = self.q_proj(h).view(B, T, self.heads, self.head_dim)
        k = self.k_proj(h).view(B, T, self.kv_heads, self.head_dim)
        v = self.v_proj(h).view(B, T, self.kv_heads, self.head_dim)
        ops.rope_(q, k, rope.cos_sin(int(positions.max()) + 1), positions)
        # The cache holds the compute dtype; the current token's key goes through it too, so that
        # prefill and step-by-step decoding see identical numbers.
        keys, values, key_pos, start = [], [], [], 0
        for cache, length in zip(caches, lengths):
            end, dtype = start + length, cache.k.dtype
            ks, vs, ps = cache.append(k[:, start:end].transpose(1, 2).to(dtype),
                                      v[:, start:end].transpose(1, 2).to(dtype), positions[start:end])  # [B, K, S, Dh]
            keys.append(ks)
            values.append(vs)
            key_pos.append(ps)
            start = end
        if len(caches) == 1:
            o = ops.sdpa_sinks(q, keys[0], values[0], self.sinks, self.sm_scale, self.window, positions, key_pos[0])
        else:  # B == 1: one op call for every sequence, each against its own cache
            o = ops.sdpa_sinks_varlen(q[0], [ks[0] for ks in keys], [vs[0] for vs in values], self.sinks,
                                      self.sm_scale, self.window, positions, key_pos, lengths)  # [T, H, Dh]
        return self.o_proj(o.reshape(B, T, self.heads * self.head_dim))


class MLPExperts(nn.Module):
    """E experts with MXFP4-packed weights (never dequantised wholesale) and float32 biases."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.alpha, self.limit = config.swiglu_alpha, config.swiglu_limit
        _buffer(self, "gate_up_proj_blocks", E, 2 * I, D // 32, 16, dtype=torch.uint8)
        _buffer(self, "gate_up_proj_scales", E, 2 * I, D // 32, dtype=torch.uint8)
        _buffer(self, "gate_up_proj_bias", E, 2 * I)
        _buffer(self, "down_proj_blocks", E, D, I // 32, 16, dtype=torch.uint8)
        _buffer(self, "down_proj_scales", E, D, I // 32, dtype=torch.uint8)
        _buffer(self, "down_proj_bias", E, D)

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor) -> torch.Tensor:
        return ops.moe_mxfp4(x, expert_ids, expert_weights,
                             self.gate_up_proj_blocks, self.gate_up_proj_scales, self.gate_up_proj_bias,
                             self.down_proj_blocks, self.down_proj_scales, self.down_proj_bias,
                             self.alpha, self.limit)


class GgmlMLPExperts(nn.Module):
    """MLPExperts over a GGUF's experts as the file stores them (memory-mapped, never repacked): ggml's
    MXFP4 blocks of 17 bytes, gate and up as two matrices (ops.moe_mxfp4_ggml; CPU only)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.alpha, self.limit = config.swiglu_alpha, config.swiglu_limit
        _buffer(self, "gate_blocks", E, I, D // 32, 17, dtype=torch.uint8)
        _buffer(self, "up_blocks", E, I, D // 32, 17, dtype=torch.uint8)
        _buffer(self, "gate_up_proj_bias", E, 2 * I)  # interleaved, as MLPExperts'
        _buffer(self, "down_blocks", E, D, I // 32, 17, dtype=torch.uint8)
        _buffer(self, "down_proj_bias", E, D)

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor) -> torch.Tensor:
        return ops.moe_mxfp4_ggml(x, expert_ids, expert_weights, self.gate_blocks, self.up_blocks,
                                  self.gate_up_proj_bias, self.down_blocks, self.down_proj_bias, self.alpha, self.limit)


class MoEBlock(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.top_k, self.dtype = config.num_experts_per_tok, dtype
        self.router = Linear(config.hidden_size, config.num_local_experts, torch.float32)
        self.experts = MLPExperts(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        x = h.reshape(B * T, D)
        router_logits = self.router(x)  # [N, E] float32
        # A stable descending sort breaks ties towards the lowest expert index, as the reference does.
        top_logits, expert_ids = torch.sort(router_logits, dim=-1, descending=True, stable=True)
        top_logits, expert_ids = top_logits[:, :self.top_k], expert_ids[:, :self.top_k]  # [N, A]
        expert_weights = torch.softmax(top_logits, dim=-1)  # over the chosen A only
        return self.experts(x.to(self.dtype), expert_ids, expert_weights).view(B, T, D)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = AttentionBlock(config, layer, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEBlock(config, dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches: list, lengths: list[int],
                rope: RotaryEmbedding) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, caches, lengths, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embedding(nn.Module):
    def __init__(self, vocab: int, dim: int, dtype: torch.dtype):
        super().__init__()
        _buffer(self, "weight", vocab, dim, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float()


class Q8Embedding(nn.Module):
    """An embedding table stored in Q8_0 (GGUF files): it keeps ggml's blocks as the file has them
    (memory-mapped) and decodes only the rows it looks up, so the table is never widened in memory."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        _buffer(self, "blocks", vocab, dim // Q8_BLOCK, GGML_Q8_0_BYTES, dtype=torch.uint8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_ggml_q8_0(self.blocks[ids])  # [..., D] float32


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.config, self.dtype = config, dtype
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(TransformerBlock(config, i, dtype) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, dtype, bias=False)
        self.rope: RotaryEmbedding | None = None  # made by bind_device once weights are in place

    def bind_device(self, device: torch.device) -> None:
        self.rope = RotaryEmbedding(self.config, device)

    def quantize_dense_(self, originals_mapped: bool) -> None:
        """Attention q/k/v/o and the unembedding to 8 bits (Q8_0's layout and error), in place. When
        the originals are views of the memory-mapped checkpoint, their pages are given back, so that
        memory holds the int8 copies instead of both. A matrix whose rows are not whole blocks of 32
        stays as it is (as llama.cpp keeps such tensors unquantized; gpt-oss has none)."""
        modules = [(layer.self_attn, name) for layer in self.layers for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        for owner, name in [*modules, (self, "lm_head")]:
            original = getattr(owner, name)
            if not isinstance(original, Linear) or original.weight.shape[1] % Q8_BLOCK:
                continue  # already Q8_0 (as a GGUF stored it), or rows that are not whole blocks
            setattr(owner, name, Q8Linear.quantize(original))
            if originals_mapped:
                drop_pages(original.weight)

    def use_q8_0_(self, names: Iterable[str]) -> None:
        """Before loading: the named dense modules ("lm_head", "layers.0.self_attn.q_proj",
        "embed_tokens", ...) become Q8_0 ones, for a checkpoint that stores them in Q8_0 (a GGUF file);
        their weights are then loaded as `qweight` and `scales` (`blocks` for the embedding)."""
        for name in names:
            owner_name, _, attribute = name.rpartition(".")
            owner = self.get_submodule(owner_name)
            dense = getattr(owner, attribute)
            if isinstance(dense, Embedding):
                setattr(owner, attribute, Q8Embedding(*dense.weight.shape))
            else:
                out_features, in_features = dense.weight.shape
                setattr(owner, attribute, Q8Linear(in_features, out_features, bias=dense.bias is not None))

    def use_ggml_experts_(self) -> None:
        """Before loading: every layer's experts take ggml's blocks as a GGUF stores them (GgmlMLPExperts)."""
        for layer in self.layers:
            layer.mlp.experts = GgmlMLPExperts(self.config)

    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Runs ids [B, T] after the cached context; returns final-normed hidden states [B, T, D] float32."""
        return self._run(ids, [cache], [ids.shape[1]], cache.reserve(ids.shape[1]))

    def forward_sequences(self, ids: list[torch.Tensor], caches: list[KVCache]) -> torch.Tensor:
        """Runs several sequences' new tokens (ids[i] [T_i] after caches[i], each of batch 1) in one
        pass: every weight is read once for all of them. Returns hidden states [sum T_i, D] float32,
        the sequences' rows back to back."""
        lengths = [len(t) for t in ids]
        positions = torch.cat([cache.reserve(n) for cache, n in zip(caches, lengths)])  # [N]
        return self._run(torch.cat(ids).unsqueeze(0), caches, lengths, positions)[0]

    def _run(self, ids: torch.Tensor, caches: list[KVCache], lengths: list[int], positions: torch.Tensor):
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, [cache.layers[i] for cache in caches], lengths, self.rope)
        for cache, n in zip(caches, lengths):
            cache.advance(n)
        return self.norm(x)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> logits [..., V] float32."""
        return self.lm_head(hidden)
