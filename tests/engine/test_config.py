"""ModelConfig: the real gpt-oss config files (both spellings), round trips, and every way a config
can be wrong. Each error must be a ConfigError whose message names the offending field."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from engine.config import (FULL, SLIDING, ConfigError, ModelConfig, YarnScaling, alternating_layer_types,
                           yarn_correction_range)
from engine.presets import PRESETS

# The Hugging Face config.json of openai/gpt-oss-20b, verbatim.
HF_20B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}

# The OpenAI original/config.json of openai/gpt-oss-20b, verbatim.
ORIGINAL_20B = {
    "num_hidden_layers": 24,
    "num_experts": 32,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "swiglu_limit": 7.0,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "initial_context_length": 4096,
    "rope_theta": 150000,
    "rope_scaling_factor": 32.0,
    "rope_ntk_alpha": 1,
    "rope_ntk_beta": 32,
}


def hf_120b() -> dict:
    raw = copy.deepcopy(HF_20B)
    raw.update(num_hidden_layers=36, num_local_experts=128,
               layer_types=["sliding_attention", "full_attention"] * 18)
    return raw


def original_120b() -> dict:
    raw = dict(ORIGINAL_20B)
    raw.update(num_hidden_layers=36, num_experts=128)
    return raw


def hf(**changes) -> dict:
    """A deep copy of the real 20b HF config with top-level keys replaced (value None deletes)."""
    raw = copy.deepcopy(HF_20B)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def transformers5_style(raw: dict) -> dict:
    """transformers 5 spelling: 'rope_parameters' with rope_theta folded in, no top-level rope_theta."""
    raw = copy.deepcopy(raw)
    rope = raw.pop("rope_scaling")
    raw["rope_parameters"] = {**rope, "rope_theta": raw.pop("rope_theta")}
    return raw


def assert_fields_equal(a: ModelConfig, b: ModelConfig) -> None:
    for field in dataclasses.fields(ModelConfig):
        assert getattr(a, field.name) == getattr(b, field.name), field.name
    assert a == b


# ----------------------------------------------------------------------------------------------
# The real configs


def test_real_20b_hf_config_parses():
    config = ModelConfig.from_hf_dict(copy.deepcopy(HF_20B))
    assert config.num_hidden_layers == 24
    assert config.hidden_size == 2880
    assert config.intermediate_size == 2880
    assert config.num_attention_heads == 64
    assert config.num_key_value_heads == 8
    assert config.head_dim == 64
    assert config.num_local_experts == 32
    assert config.num_experts_per_tok == 4
    assert config.vocab_size == 201088
    assert config.rms_norm_eps == 1e-5
    assert config.rope_theta == 150000
    assert config.rope_scaling == YarnScaling(factor=32.0, beta_fast=32.0, beta_slow=1.0,
                                              original_max_position_embeddings=4096, truncate=False)
    assert config.max_position_embeddings == 131072
    assert config.sliding_window == 128
    assert config.layer_types == (SLIDING, FULL) * 12
    assert isinstance(config.layer_types, tuple)
    assert config.swiglu_limit == 7.0
    assert config.swiglu_alpha == 1.702
    assert config.q_width == 64 * 64
    assert config.kv_width == 8 * 64
    assert [config.window_of(i) for i in range(4)] == [128, 0, 128, 0]


def test_real_120b_hf_config_parses():
    config = ModelConfig.from_hf_dict(hf_120b())
    assert config.num_hidden_layers == 36
    assert config.num_local_experts == 128
    assert config.num_experts_per_tok == 4
    assert config.layer_types == (SLIDING, FULL) * 18
    assert config.hidden_size == 2880 and config.head_dim == 64 and config.sliding_window == 128
    assert config == dataclasses.replace(ModelConfig.from_hf_dict(copy.deepcopy(HF_20B)),
                                         num_hidden_layers=36, num_local_experts=128,
                                         layer_types=(SLIDING, FULL) * 18)


@pytest.mark.parametrize("hf_raw, original_raw", [(HF_20B, ORIGINAL_20B), (hf_120b(), original_120b())],
                         ids=["20b", "120b"])
def test_original_config_parses_to_the_same_model_config(hf_raw, original_raw):
    from_hf = ModelConfig.from_hf_dict(copy.deepcopy(hf_raw))
    from_original = ModelConfig.from_original_dict(dict(original_raw))
    assert_fields_equal(from_original, from_hf)
    # The renamed YaRN parameters: rope_ntk_beta is beta_fast, rope_ntk_alpha is beta_slow.
    assert from_original.rope_scaling.beta_fast == original_raw["rope_ntk_beta"] == 32
    assert from_original.rope_scaling.beta_slow == original_raw["rope_ntk_alpha"] == 1
    assert from_original.rms_norm_eps == 1e-5
    assert from_original.max_position_embeddings == 4096 * 32
    # Even layers use the sliding window, odd layers attend to everything.
    assert all(t == (SLIDING if i % 2 == 0 else FULL) for i, t in enumerate(from_original.layer_types))


def test_from_file_detects_both_spellings(tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(HF_20B))
    (tmp_path / "original" / "config.json").write_text(json.dumps(ORIGINAL_20B))
    assert_fields_equal(ModelConfig.from_file(tmp_path / "config.json"),
                        ModelConfig.from_file(tmp_path / "original" / "config.json"))
    assert ModelConfig.from_file(str(tmp_path / "config.json")) == ModelConfig.from_hf_dict(copy.deepcopy(HF_20B))


@pytest.mark.parametrize("raw", [HF_20B, hf_120b()], ids=["20b", "120b"])
def test_transformers5_rope_parameters_parse_the_same(raw):
    new_style = transformers5_style(raw)
    assert "rope_theta" not in new_style and "rope_scaling" not in new_style
    assert new_style["rope_parameters"]["rope_theta"] == 150000
    assert_fields_equal(ModelConfig.from_hf_dict(new_style), ModelConfig.from_hf_dict(copy.deepcopy(raw)))


def test_rope_parameters_next_to_an_agreeing_rope_scaling_and_rope_theta_parse_the_same():
    raw = copy.deepcopy(HF_20B)
    raw["rope_parameters"] = {**raw["rope_scaling"], "rope_theta": raw["rope_theta"]}
    assert ModelConfig.from_hf_dict(raw) == ModelConfig.from_hf_dict(copy.deepcopy(HF_20B))


def test_missing_layer_types_default_to_alternating():
    config = ModelConfig.from_hf_dict(hf(layer_types=None))
    assert config.layer_types == alternating_layer_types(24) == (SLIDING, FULL) * 12


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_hf_dict_round_trip(preset, tmp_path):
    config = PRESETS[preset]
    assert_fields_equal(ModelConfig.from_hf_dict(config.to_hf_dict()), config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_hf_dict()))
    assert_fields_equal(ModelConfig.from_file(path), config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_original_dict_round_trip(preset, tmp_path):
    config = PRESETS[preset]
    assert_fields_equal(ModelConfig.from_original_dict(config.to_original_dict()), config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_original_dict()))
    assert_fields_equal(ModelConfig.from_file(path), config)


def test_real_configs_round_trip():
    config = ModelConfig.from_hf_dict(copy.deepcopy(HF_20B))
    assert config.to_hf_dict() == HF_20B
    assert config.to_original_dict() == ORIGINAL_20B


def test_original_dict_cannot_express_non_alternating_layers():
    config = ModelConfig.from_hf_dict(hf(layer_types=[FULL] * 24))
    with pytest.raises(ConfigError, match="layer_types"):
        config.to_original_dict()


# ----------------------------------------------------------------------------------------------
# Errors: each names the field


def raises_naming(*fields: str):
    """Context manager: a ConfigError whose message contains every one of `fields`."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(ConfigError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            for field in fields:
                assert field in message, f"{field!r} not in {message!r}"
            return handled

    return _Check()


def test_unknown_model_type():
    with raises_naming("model_type", "llama"):
        ModelConfig.from_hf_dict(hf(model_type="llama"))


def test_unknown_hf_key():
    with raises_naming("num_shared_experts"):
        ModelConfig.from_hf_dict(hf(num_shared_experts=2))


def test_unknown_original_key():
    with raises_naming("rope_ntk_gamma"):
        ModelConfig.from_original_dict({**ORIGINAL_20B, "rope_ntk_gamma": 3})


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "head_dim", "sliding_window",
                                   "rope_theta", "swiglu_limit", "num_local_experts", "num_experts_per_tok",
                                   "intermediate_size", "vocab_size", "rms_norm_eps",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings"])
def test_required_hf_field_missing(field):
    with raises_naming(field, "missing"):
        ModelConfig.from_hf_dict(hf(**{field: None}))


@pytest.mark.parametrize("field", ["factor", "original_max_position_embeddings"])
def test_required_rope_scaling_field_missing(field):
    rope = {k: v for k, v in HF_20B["rope_scaling"].items() if k != field}
    with raises_naming(field, "missing"):
        ModelConfig.from_hf_dict(hf(rope_scaling=rope))


def test_rope_scaling_missing():
    with raises_naming("rope_scaling", "missing"):
        ModelConfig.from_hf_dict(hf(rope_scaling=None))


@pytest.mark.parametrize("field", ["num_experts", "rope_ntk_beta", "rope_ntk_alpha", "experts_per_token",
                                   "hidden_size", "num_hidden_layers", "initial_context_length",
                                   "rope_scaling_factor", "head_dim", "sliding_window", "rope_theta"])
def test_required_original_field_missing(field):
    raw = {k: v for k, v in ORIGINAL_20B.items() if k != field}
    with raises_naming(field):
        ModelConfig.from_original_dict(raw)


def test_original_config_without_num_experts_is_not_recognised(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in ORIGINAL_20B.items() if k != "num_experts"}))
    with raises_naming(str(path), "num_experts", "model_type"):
        ModelConfig.from_file(path)


def test_from_file_error_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf(sliding_window=None)))
    with raises_naming(str(path), "sliding_window"):
        ModelConfig.from_file(path)


def _rope(**changes) -> dict:
    return {**HF_20B["rope_scaling"], **changes}


CONTRADICTIONS = {
    "experts_per_token != num_experts_per_tok": (hf(experts_per_token=2), ["experts_per_token",
                                                                          "num_experts_per_tok"]),
    "initial_context_length != original_max_position_embeddings": (
        hf(initial_context_length=8192), ["initial_context_length", "original_max_position_embeddings"]),
    "rope_scaling vs rope_parameters": (
        hf(rope_parameters={**_rope(factor=16.0), "rope_theta": 150000}), ["rope_scaling", "rope_parameters"]),
    "rope_theta vs rope_parameters.rope_theta": (
        hf(rope_scaling=None, rope_parameters={**_rope(), "rope_theta": 10000}), ["rope_theta",
                                                                                 "rope_parameters"]),
    "layer_types shorter than num_hidden_layers": (hf(layer_types=[SLIDING, FULL] * 11),
                                                   ["layer_types", "num_hidden_layers"]),
    "layer_types longer than num_hidden_layers": (hf(layer_types=[SLIDING, FULL] * 13),
                                                  ["layer_types", "num_hidden_layers"]),
    "unknown layer type": (hf(layer_types=["sliding_attention", "chunked_attention"] * 12),
                           ["layer_types", "chunked_attention"]),
    "heads not a multiple of kv heads": (hf(num_key_value_heads=6), ["num_attention_heads",
                                                                     "num_key_value_heads"]),
    "hidden_size not a multiple of 32": (hf(hidden_size=2880 + 16), ["hidden_size", "32"]),
    "intermediate_size not a multiple of 32": (hf(intermediate_size=2880 - 8), ["intermediate_size", "32"]),
    "head_dim odd": (hf(head_dim=63), ["head_dim"]),
    "num_experts_per_tok > num_local_experts": (hf(num_experts_per_tok=64, experts_per_token=64),
                                                ["num_experts_per_tok", "num_local_experts"]),
    "tie_word_embeddings true": (hf(tie_word_embeddings=True), ["tie_word_embeddings"]),
    "attention_bias false": (hf(attention_bias=False), ["attention_bias"]),
    "quantization_config missing": (hf(quantization_config=None), ["quantization_config", "mxfp4"]),
    "quantization_config not mxfp4": (hf(quantization_config={"quant_method": "bitsandbytes"}),
                                      ["quantization_config", "mxfp4"]),
    "quantization_config not an object": (hf(quantization_config="mxfp4"), ["quantization_config"]),
    "rope type not yarn": (hf(rope_scaling=_rope(rope_type="linear")), ["rope_type", "yarn"]),
    "rope_scaling not an object": (hf(rope_scaling="yarn"), ["rope_scaling"]),
    "yarn betas reversed": (hf(rope_scaling=_rope(beta_fast=1.0, beta_slow=32.0)), ["rope_scaling"]),
    "yarn factor below 1": (hf(rope_scaling=_rope(factor=0.5)), ["rope_scaling"]),
}


@pytest.mark.parametrize("name", list(CONTRADICTIONS))
def test_contradictory_or_unsupported_fields(name):
    raw, fields = CONTRADICTIONS[name]
    with raises_naming(*fields):
        ModelConfig.from_hf_dict(copy.deepcopy(raw))


@pytest.mark.parametrize("field, value", [
    ("hidden_size", -2880), ("hidden_size", 0), ("hidden_size", True), ("hidden_size", 2880.0),
    ("hidden_size", "2880"), ("num_hidden_layers", 0), ("num_hidden_layers", -24),
    ("num_attention_heads", False), ("num_key_value_heads", 0), ("head_dim", -64),
    ("intermediate_size", 0), ("vocab_size", -1), ("sliding_window", 0), ("sliding_window", True),
    ("max_position_embeddings", 0), ("num_local_experts", 0), ("num_experts_per_tok", 0),
    ("rms_norm_eps", 0.0), ("rms_norm_eps", -1e-5), ("rope_theta", 0), ("rope_theta", True),
    ("swiglu_limit", -7.0), ("swiglu_limit", False), ("swiglu_alpha", 0.0),
])
def test_non_positive_or_boolean_values(field, value):
    changes = {field: value}
    if field == "num_experts_per_tok":
        changes["experts_per_token"] = value
    with raises_naming(field):
        ModelConfig.from_hf_dict(hf(**changes))


@pytest.mark.parametrize("field, value", [("num_experts", 0), ("hidden_size", -2880), ("head_dim", True),
                                          ("sliding_window", 0), ("experts_per_token", 0)])
def test_non_positive_or_boolean_original_values(field, value):
    expected = {"num_experts": "num_local_experts", "experts_per_token": "num_experts_per_tok"}.get(field, field)
    with raises_naming(expected):
        ModelConfig.from_original_dict({**ORIGINAL_20B, field: value})


def test_corrupt_json_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_20B)[:-40])
    with raises_naming(str(path), "JSON"):
        ModelConfig.from_file(path)


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe{\x00}")
    with raises_naming(str(path)):
        ModelConfig.from_file(path)


def test_top_level_json_array(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps([HF_20B]))
    with raises_naming(str(path), "object"):
        ModelConfig.from_file(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "config.json"
    with raises_naming(str(path), "not found"):
        ModelConfig.from_file(path)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------------------------
# YaRN


def test_yarn_correction_range_of_the_real_config():
    low, high = yarn_correction_range(ModelConfig.from_hf_dict(copy.deepcopy(HF_20B)))
    assert low == pytest.approx(8.092779115512402, abs=1e-12)
    assert high == pytest.approx(17.39802450158856, abs=1e-12)
    # The original spelling gives the same numbers.
    assert yarn_correction_range(ModelConfig.from_original_dict(dict(ORIGINAL_20B))) == (low, high)


def test_yarn_correction_range_truncated():
    config = ModelConfig.from_hf_dict(hf(rope_scaling=_rope(truncate=True)))
    assert config.rope_scaling.truncate is True
    assert yarn_correction_range(config) == (8, 18)


# ----------------------------------------------------------------------------------------------
# Malformed values: each is a ConfigError naming the field, not a TypeError, a silently ignored key
# or a bogus config.


@pytest.mark.parametrize("raw, field", [
    pytest.param(hf(rope_scaling=_rope(attention_factor=2.0)), "attention_factor", id="unknown rope key"),
    pytest.param(hf(rope_scaling=_rope(beta_fst=16.0)), "beta_fst", id="misspelt rope key"),
    pytest.param(hf(rope_scaling=_rope(factor="32.0")), "factor", id="rope factor a string"),
    pytest.param(hf(rope_scaling=_rope(beta_fast=None)), "beta_fast", id="beta_fast null"),
    pytest.param(hf(rope_scaling=_rope(truncate="false")), "truncate", id="truncate a string"),
    pytest.param(hf(initial_context_length=None, rope_scaling=_rope(original_max_position_embeddings=4096.5)),
                 "original_max_position_embeddings", id="original context length not an integer"),
    pytest.param(hf(layer_types=5), "layer_types", id="layer_types not a list"),
    pytest.param(hf(layer_types=[[SLIDING]] * 24), "layer_types", id="layer_types entries not strings"),
    pytest.param(hf(rope_theta=float("inf")), "rope_theta", id="rope_theta infinite"),
    pytest.param(hf(rope_scaling=_rope(factor=float("inf"))), "factor", id="rope factor infinite"),
])
def test_malformed_hf_values(raw, field):
    with raises_naming(field):
        ModelConfig.from_hf_dict(copy.deepcopy(raw))


@pytest.mark.parametrize("field, value", [
    ("rope_scaling_factor", "32"), ("initial_context_length", 4096.5), ("num_hidden_layers", "24"),
])
def test_malformed_original_values(field, value):
    with raises_naming(field):
        ModelConfig.from_original_dict({**ORIGINAL_20B, field: value})
