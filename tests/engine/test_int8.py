"""weights="int8": the engine with Q8_0 attention and unembedding computes what the float32 model
computes with those weights dequantized (the quantization is the only change), and the bf16 /
default path is untouched."""

from __future__ import annotations

import pytest
import torch

from engine import Engine
from engine.int8 import dequantize_q8_0, quantize_q8_0
from engine.model import Linear, Q8Linear

from tests.engine.transformers_reference import token_ids

# as tests/engine/test_model.py: float32 implementations of one model agree to these
TOLERANCE = {"tiny": 2e-4, "tiny-odd": 2e-4, "small": 1e-3}


def _quantized_names(engine: Engine) -> list[tuple[object, str]]:
    layers = [(layer.self_attn, name) for layer in engine.model.layers for name in ("q_proj", "k_proj", "v_proj",
                                                                                    "o_proj")]
    return [*layers, (engine.model, "lm_head")]


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_int8_equals_float32_with_the_dequantized_weights(name, model_dirs):
    int8 = Engine.load(model_dirs[name], dtype="float32", weights="int8")
    plain = Engine.load(model_dirs[name], dtype="float32")
    for (owner, attribute), (owner8, _) in zip(_quantized_names(plain), _quantized_names(int8)):
        linear = getattr(owner, attribute)
        whole_blocks = linear.weight.shape[1] % 32 == 0  # tiny-odd's o_proj (144 wide) stays float32
        assert isinstance(getattr(owner8, attribute), Q8Linear if whole_blocks else Linear)
        if whole_blocks:
            linear.weight = dequantize_q8_0(*quantize_q8_0(linear.weight))
    ids = token_ids(seed=21)
    assert (int8.logits(ids) - plain.logits(ids)).abs().max().item() <= TOLERANCE[name]


def test_int8_in_bf16_mode_tracks_the_float32_model(model_dirs):
    ids = token_ids(seed=22)
    full = Engine.load(model_dirs["tiny"], dtype="float32").logits(ids).log_softmax(-1)
    for weights in (None, "int8"):
        ours = Engine.load(model_dirs["tiny"], dtype="bfloat16", weights=weights).logits(ids).log_softmax(-1)
        kl = (full.exp() * (full - ours)).sum(-1).mean().item()
        agree = (full.argmax(-1) == ours.argmax(-1)).float().mean().item()
        assert agree >= 0.9 and kl < 0.01, (weights, agree, kl)


def test_the_default_keeps_bf16_weights_and_bad_modes_are_refused(model_dirs):
    engine = Engine.load(model_dirs["tiny"], dtype="bfloat16")
    assert all(isinstance(getattr(owner, attribute), Linear) for owner, attribute in _quantized_names(engine))
    assert engine.model.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="weights must be 'bf16' or 'int8'"):
        Engine.load(model_dirs["tiny"], weights="int4")
