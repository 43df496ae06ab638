"""The model shapes `make-model` writes (tiny ones for tests up to the real 20b and 120b dimensions).

Torch-free, so that the command line can list them without importing torch.
"""

from __future__ import annotations

from dataclasses import replace

from engine.config import ModelConfig, YarnScaling, alternating_layer_types

VOCAB_SIZE = 201088  # the real padded vocabulary: the real tokenizer and harmony ids fit in it
_YARN = YarnScaling(factor=32.0, beta_fast=32.0, beta_slow=1.0, original_max_position_embeddings=4096)


def _preset(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, experts: int, k: int,
            intermediate: int, window: int) -> ModelConfig:
    return ModelConfig(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        num_local_experts=experts, num_experts_per_tok=k, vocab_size=VOCAB_SIZE, rms_norm_eps=1e-5,
        rope_theta=150000.0, rope_scaling=_YARN, max_position_embeddings=131072, sliding_window=window,
        layer_types=alternating_layer_types(layers), swiglu_limit=7.0)


PRESETS: dict[str, ModelConfig] = {
    # Small enough for unit tests; windows shorter than the test sequences.
    "tiny": _preset(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, experts=4, k=2,
                    intermediate=64, window=8),
    # No power of two where the format allows it: 3 heads per kv head, 5 experts, top-3.
    "tiny-odd": _preset(layers=3, hidden=96, heads=6, kv_heads=2, head_dim=24, experts=5, k=3,
                        intermediate=160, window=7),
    # head_dim 64 and top-4 as in the real models, still CPU-cheap.
    "small": _preset(layers=4, hidden=256, heads=8, kv_heads=2, head_dim=64, experts=8, k=4,
                     intermediate=288, window=16),
    # The trained demo model (engine.demo): small enough to train on 2 cores within an hour.
    "demo": _preset(layers=4, hidden=128, heads=4, kv_heads=2, head_dim=32, experts=4, k=2,
                    intermediate=256, window=128),
    "20b-shape": _preset(layers=24, hidden=2880, heads=64, kv_heads=8, head_dim=64, experts=32, k=4,
                         intermediate=2880, window=128),
    "120b-shape": _preset(layers=36, hidden=2880, heads=64, kv_heads=8, head_dim=64, experts=128, k=4,
                          intermediate=2880, window=128),
}


def preset_config(preset: str, layers: int | None = None) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset]
    if layers is not None:
        if layers <= 0:
            raise ValueError(f"layers must be positive, got {layers}")
        config = replace(config, num_hidden_layers=layers, layer_types=alternating_layer_types(layers))
    return config
