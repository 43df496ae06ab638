"""Model configuration read from a gpt-oss checkpoint directory.

Two spellings exist on disk: the Hugging Face `config.json` at the repository root and the OpenAI
reference `original/config.json`. Both become one frozen `ModelConfig` whose field names are the
Hugging Face keys. Every number the forward pass uses comes from here; nothing is hard-coded to the
20b or 120b sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"

# Training-only or informational Hugging Face keys: accepted and ignored.
_HF_IGNORED = frozenset({
    "architectures", "attention_dropout", "bos_token_id", "dtype", "eos_token_id", "hidden_act",
    "initializer_range", "output_router_logits", "pad_token_id", "router_aux_loss_coef",
    "torch_dtype", "transformers_version", "use_cache",
})
# Keys that must hold one specific value for the forward pass we implement.
_HF_REQUIRED_VALUES = {"attention_bias": True, "tie_word_embeddings": False}
_MXFP4_BLOCK = 32
# Keys a YaRN rope section may have ("type" is the pre-4.45 spelling of "rope_type").
_ROPE_KEYS = frozenset({"rope_type", "type", "factor", "beta_fast", "beta_slow", "original_max_position_embeddings",
                        "truncate", "rope_theta", "attention_factor"})


class ConfigError(ValueError):
    """A config file is unreadable, incomplete or contradicts itself; the message names the field."""


@dataclass(frozen=True)
class YarnScaling:
    """YaRN context extension (Peng et al. 2023, arXiv:2309.00071) as gpt-oss uses it."""

    factor: float
    beta_fast: float
    beta_slow: float
    original_max_position_embeddings: int
    truncate: bool = False  # True would round the correction range; gpt-oss ships False

    def __post_init__(self) -> None:
        for name in ("factor", "beta_fast", "beta_slow"):
            _check_positive_number(getattr(self, name), f"rope_scaling.{name}")
        _check_positive_int(self.original_max_position_embeddings, "rope_scaling.original_max_position_embeddings")
        if not isinstance(self.truncate, bool):
            raise ConfigError(f"config field 'rope_scaling.truncate' must be true or false, got {self.truncate!r}")


@dataclass(frozen=True)
class ModelConfig:
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: YarnScaling
    max_position_embeddings: int
    sliding_window: int
    layer_types: tuple[str, ...]
    swiglu_limit: float
    swiglu_alpha: float = 1.702

    def __post_init__(self) -> None:
        if not isinstance(self.layer_types, (list, tuple)) or not all(isinstance(t, str) for t in self.layer_types):
            raise ConfigError(f"config field 'layer_types' must be a list of strings, got {self.layer_types!r}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))  # lists from JSON compare unequal
        for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok",
                     "vocab_size", "max_position_embeddings", "sliding_window"):
            _check_positive_int(getattr(self, name), name)
        for name in ("rms_norm_eps", "rope_theta", "swiglu_limit", "swiglu_alpha"):
            _check_positive_number(getattr(self, name), name)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                f"'num_key_value_heads' ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"config field 'head_dim' must be even for RoPE, got {self.head_dim}")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % _MXFP4_BLOCK:
                raise ConfigError(f"config field {name!r} ({getattr(self, name)}) must be a multiple of "
                                  f"{_MXFP4_BLOCK}, the MXFP4 block size")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(f"config field 'num_experts_per_tok' ({self.num_experts_per_tok}) exceeds "
                              f"'num_local_experts' ({self.num_local_experts})")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"config field 'layer_types' has {len(self.layer_types)} entries but "
                              f"'num_hidden_layers' is {self.num_hidden_layers}")
        bad = sorted({t for t in self.layer_types if t not in (SLIDING, FULL)})
        if bad:
            raise ConfigError(f"config field 'layer_types' has unknown entries {bad}; "
                              f"expected {SLIDING!r} or {FULL!r}")
        yarn = self.rope_scaling
        if not yarn.factor >= 1 or not yarn.beta_fast > yarn.beta_slow > 0 or \
                yarn.original_max_position_embeddings <= 0:
            raise ConfigError(f"config field 'rope_scaling' is inconsistent: {yarn}")

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def window_of(self, layer: int) -> int:
        """Keys visible to a query in this layer (counting itself); 0 means unlimited."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else 0

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Reads a Hugging Face `config.json` or an OpenAI `original/config.json`.

        Raises:
            ConfigError: unreadable JSON, unknown `model_type`, unknown key, missing or contradictory field.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        try:
            if "model_type" in raw:
                return cls.from_hf_dict(raw)
            if "num_experts" in raw:
                return cls.from_original_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        raise ConfigError(f"{path}: neither a Hugging Face config (no 'model_type') nor an OpenAI "
                          f"original config (no 'num_experts')")

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        fields = _Fields(raw)
        model_type = fields.take("model_type")
        if model_type != "gpt_oss":
            raise ConfigError(f"config field 'model_type' is {model_type!r}; only 'gpt_oss' is supported")
        for key, value in _HF_REQUIRED_VALUES.items():
            if key in raw and raw[key] is not value:
                raise ConfigError(f"config field {key!r} must be {value} for gpt-oss, got {raw[key]!r}")
            fields.discard(key)
        quant = fields.take("quantization_config", None)
        if quant is None or not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4":
            raise ConfigError(f"config field 'quantization_config' must declare quant_method 'mxfp4' "
                              f"(MXFP4 expert weights), got {quant!r}")
        fields.discard(*_HF_IGNORED)

        # transformers 5 folds rope_theta into 'rope_parameters'; older files use 'rope_scaling'.
        rope = _rope_section(fields.take("rope_scaling", None), fields.take("rope_parameters", None))
        unknown = sorted(set(rope) - _ROPE_KEYS)
        if unknown:
            raise ConfigError(f"unknown config field(s) {['rope_scaling.' + k for k in unknown]}")
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type != "yarn":
            raise ConfigError(f"config field 'rope_scaling.rope_type' is {rope_type!r}; gpt-oss uses 'yarn'")
        rope_theta = fields.take("rope_theta", None)
        if "rope_theta" in rope:
            if rope_theta is not None and rope_theta != rope["rope_theta"]:
                raise ConfigError(f"config fields 'rope_theta' ({rope_theta}) and "
                                  f"'rope_parameters.rope_theta' ({rope['rope_theta']}) disagree")
            rope_theta = rope["rope_theta"]
        if rope_theta is None:
            raise ConfigError("config field 'rope_theta' is missing")
        yarn = YarnScaling(
            factor=_need(rope, "factor", "rope_scaling."),
            beta_fast=rope.get("beta_fast", 32.0),
            beta_slow=rope.get("beta_slow", 1.0),
            original_max_position_embeddings=_need(rope, "original_max_position_embeddings",
                                                   "rope_scaling."),
            truncate=rope.get("truncate", False),
        )
        attention_factor = rope.get("attention_factor")
        if attention_factor is not None and (
                not isinstance(attention_factor, (int, float)) or
                abs(attention_factor - (0.1 * math.log(yarn.factor) + 1)) > 1e-9):
            raise ConfigError(f"config field 'rope_scaling.attention_factor' is {attention_factor!r}; gpt-oss "
                              f"uses the YaRN default 0.1·ln(factor) + 1")
        legacy_length = fields.take("initial_context_length", None)
        if legacy_length is not None and legacy_length != yarn.original_max_position_embeddings:
            raise ConfigError(
                f"config fields 'initial_context_length' ({legacy_length}) and "
                f"'rope_scaling.original_max_position_embeddings' "
                f"({yarn.original_max_position_embeddings}) disagree")
        experts_per_tok = fields.take("num_experts_per_tok")
        legacy_k = fields.take("experts_per_token", None)
        if legacy_k is not None and legacy_k != experts_per_tok:
            raise ConfigError(f"config fields 'num_experts_per_tok' ({experts_per_tok}) and "
                              f"'experts_per_token' ({legacy_k}) disagree")
        num_layers = fields.take("num_hidden_layers")
        layer_types = fields.take("layer_types", None)
        if layer_types is None:
            layer_types = alternating_layer_types(num_layers)
        config = cls(
            num_hidden_layers=num_layers,
            hidden_size=fields.take("hidden_size"),
            intermediate_size=fields.take("intermediate_size"),
            num_attention_heads=fields.take("num_attention_heads"),
            num_key_value_heads=fields.take("num_key_value_heads"),
            head_dim=fields.take("head_dim"),
            num_local_experts=fields.take("num_local_experts"),
            num_experts_per_tok=experts_per_tok,
            vocab_size=fields.take("vocab_size"),
            rms_norm_eps=fields.take("rms_norm_eps"),
            rope_theta=rope_theta,
            rope_scaling=yarn,
            max_position_embeddings=fields.take("max_position_embeddings"),
            sliding_window=fields.take("sliding_window"),
            layer_types=layer_types,
            swiglu_limit=fields.take("swiglu_limit"),
            swiglu_alpha=fields.take("swiglu_alpha", 1.702),
        )
        fields.reject_rest()
        return config

    @classmethod
    def from_original_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        fields = _Fields(raw)
        # Checked before use: the derived fields below would turn bad values into nonsense.
        num_layers = _check_positive_int(fields.take("num_hidden_layers"), "num_hidden_layers")
        original_length = _check_positive_int(fields.take("initial_context_length"), "initial_context_length")
        factor = _check_positive_number(fields.take("rope_scaling_factor"), "rope_scaling_factor")
        config = cls(
            num_hidden_layers=num_layers,
            hidden_size=fields.take("hidden_size"),
            intermediate_size=fields.take("intermediate_size"),
            num_attention_heads=fields.take("num_attention_heads"),
            num_key_value_heads=fields.take("num_key_value_heads"),
            head_dim=fields.take("head_dim"),
            num_local_experts=fields.take("num_experts"),
            num_experts_per_tok=fields.take("experts_per_token"),
            vocab_size=fields.take("vocab_size"),
            rms_norm_eps=1e-5,  # the reference hard-codes it; the original config has no field
            rope_theta=fields.take("rope_theta"),
            # rope_ntk_beta is the HF beta_fast (low correction dim), rope_ntk_alpha the beta_slow.
            rope_scaling=YarnScaling(factor=factor, beta_fast=fields.take("rope_ntk_beta"),
                                     beta_slow=fields.take("rope_ntk_alpha"),
                                     original_max_position_embeddings=original_length),
            max_position_embeddings=int(original_length * factor),
            sliding_window=fields.take("sliding_window"),
            layer_types=alternating_layer_types(num_layers),
            swiglu_limit=fields.take("swiglu_limit"),
        )
        fields.reject_rest()
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` content for this configuration."""
        yarn = self.rope_scaling
        return {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "experts_per_token": self.num_experts_per_tok,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": yarn.original_max_position_embeddings,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": False,
            "pad_token_id": 199999,
            "quantization_config": {
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": yarn.beta_fast, "beta_slow": yarn.beta_slow, "factor": yarn.factor,
                "original_max_position_embeddings": yarn.original_max_position_embeddings,
                "rope_type": "yarn", "truncate": yarn.truncate,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "transformers_version": "4.55.0.dev0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def to_original_dict(self) -> dict[str, Any]:
        """The OpenAI `original/config.json` content (which can only express alternating layers)."""
        if self.layer_types != alternating_layer_types(self.num_hidden_layers):
            raise ConfigError("the original config format can only express alternating layer_types")
        yarn = self.rope_scaling
        return {
            "num_hidden_layers": self.num_hidden_layers, "num_experts": self.num_local_experts,
            "experts_per_token": self.num_experts_per_tok, "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit, "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "sliding_window": self.sliding_window,
            "initial_context_length": yarn.original_max_position_embeddings,
            "rope_theta": self.rope_theta, "rope_scaling_factor": yarn.factor,
            "rope_ntk_alpha": yarn.beta_slow, "rope_ntk_beta": yarn.beta_fast,
        }


def yarn_correction_range(config: ModelConfig) -> tuple[float, float]:
    """The (low, high) rotary dims between which YaRN blends extrapolation and interpolation."""
    yarn, d = config.rope_scaling, config.head_dim

    def dim_for(beta: float) -> float:
        return d * math.log(yarn.original_max_position_embeddings / (beta * 2 * math.pi)) / (
            2 * math.log(config.rope_theta))

    low, high = dim_for(yarn.beta_fast), dim_for(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    return low, high


def alternating_layer_types(num_layers: int) -> tuple[str, ...]:
    # gpt-oss: even layers use the sliding window, odd layers attend to the full context.
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))


def _rope_section(scaling: Any, parameters: Any) -> dict[str, Any]:
    # transformers 5 renamed 'rope_scaling' to 'rope_parameters' and folded rope_theta into it.
    for name, value in (("rope_scaling", scaling), ("rope_parameters", parameters)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"config field {name!r} must be an object, got {value!r}")
    if scaling is None and parameters is None:
        raise ConfigError("config field 'rope_scaling' is missing")
    if scaling is not None and parameters is not None:
        if {k: v for k, v in parameters.items() if k != "rope_theta"} != scaling:
            raise ConfigError("config fields 'rope_scaling' and 'rope_parameters' disagree")
    return parameters if parameters is not None else scaling


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
    return value


def _check_positive_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"config field {name!r} must be a positive finite number, got {value!r}")
    return value


def _need(mapping: dict[str, Any], key: str, prefix: str = "") -> Any:
    if key not in mapping:
        raise ConfigError(f"config field {prefix + key!r} is missing")
    return mapping[key]


class _Fields:
    """Consumes keys from a raw config so that leftovers can be reported as unknown."""

    _MISSING = object()

    def __init__(self, raw: dict[str, Any]):
        self._raw = raw
        self._left = set(raw)

    def take(self, key: str, default: Any = _MISSING) -> Any:
        self._left.discard(key)
        if key in self._raw:
            return self._raw[key]
        if default is self._MISSING:
            raise ConfigError(f"config field {key!r} is missing")
        return default

    def discard(self, *keys: str) -> None:
        self._left.difference_update(keys)

    def reject_rest(self) -> None:
        if self._left:
            raise ConfigError(f"unknown config field(s) {sorted(self._left)}")
