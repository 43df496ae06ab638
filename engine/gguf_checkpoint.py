"""gpt-oss GGUF files (llama.cpp's format), read onto the engine's weight table.

llama.cpp's own `gguf` package parses the files; this module maps their metadata onto `ModelConfig` and
their tensors onto `engine.weights.canonical_specs`, with one name table (llama.cpp's names come from
gguf's `TENSOR_NAMES`):

- MXFP4 experts stay as the file stores them, views of the mapped file, which the CPU kernels read in
  place (`ops.moe_mxfp4_ggml`). ggml's `block_mxfp4` is an E8M0 scale byte, then 16 bytes whose byte j
  holds element j (low nibble) and element j+16 (high nibble); Hugging Face blocks hold elements 2k
  and 2k+1 in byte k, with the scales apart. ggml's doubled value table times its halved scale
  2^(e−128) is FP4 × 2^(e−127), so the nibbles and scale bytes mean the same. llama.cpp splits the
  interleaved gate/up rows into two tensors (and their biases, which are interleaved again here: they
  are small). For a GPU, whose kernels read the Hugging Face layout, `hf_layout_experts` rewrites
  the blocks on the device after the copy there.
- F32, F16 and BF16 tensors are views of the memory-mapped files, as safetensors shards are.
- Dense tensors in Q8_0 are handed over as ggml's blocks, for the model's Q8_0 modules.

The vocabulary is not taken from the file but checked to be o200k_harmony's (a SHA-256 over its
tokens); the engine tokenizes with its bundled copy of that vocabulary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import MODEL_TENSOR, GGMLQuantizationType, GGUFValueType, Keys

from engine import o200k
from engine.checkpoint import CheckpointError, map_file, mapped_tensor
from engine.config import FULL, SLIDING, ConfigError, ModelConfig, YarnScaling, alternating_layer_types
from engine.int8 import GGML_Q8_0_BYTES, Q8_BLOCK
from engine.tokenizer import TokenizerError
from engine.weights import canonical_specs

logger = logging.getLogger(__name__)

ARCHITECTURE = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT_OSS]  # "gpt-oss"
# llama.cpp's name for o200k's pre-tokenizer (the text-splitting regex)
_PRE_TOKENIZER = "gpt-4o"
_ARRAYS_READ = frozenset({Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=ARCHITECTURE)})

_FLOAT_DTYPES = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
                 GGMLQuantizationType.BF16: torch.bfloat16}
# What each kind of tensor (engine.weights) may be stored as.
_DENSE_TYPES = frozenset({*_FLOAT_DTYPES, GGMLQuantizationType.Q8_0})  # embedding, attention, unembedding
_SMALL_TYPES = frozenset(_FLOAT_DTYPES)                                 # norms, biases, sinks, router
_EXPERT_TYPES = frozenset({GGMLQuantizationType.MXFP4})
# The block layouts this module and engine.int8 spell out (values per block, bytes per block).
assert gguf.GGML_QUANT_SIZES[GGMLQuantizationType.MXFP4] == (32, 17)
assert gguf.GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0] == (Q8_BLOCK, GGML_Q8_0_BYTES)

# THE name table: canonical name (suffix) -> the llama.cpp tensor it is, one to one.
_TOP_TABLE = {
    "model.embed_tokens.weight": (MODEL_TENSOR.TOKEN_EMBD, "weight"),
    "model.norm.weight": (MODEL_TENSOR.OUTPUT_NORM, "weight"),
    "lm_head.weight": (MODEL_TENSOR.OUTPUT, "weight"),
}
_LAYER_TABLE = {
    "input_layernorm.weight": (MODEL_TENSOR.ATTN_NORM, "weight"),
    "self_attn.q_proj.weight": (MODEL_TENSOR.ATTN_Q, "weight"),
    "self_attn.q_proj.bias": (MODEL_TENSOR.ATTN_Q, "bias"),
    "self_attn.k_proj.weight": (MODEL_TENSOR.ATTN_K, "weight"),
    "self_attn.k_proj.bias": (MODEL_TENSOR.ATTN_K, "bias"),
    "self_attn.v_proj.weight": (MODEL_TENSOR.ATTN_V, "weight"),
    "self_attn.v_proj.bias": (MODEL_TENSOR.ATTN_V, "bias"),
    "self_attn.o_proj.weight": (MODEL_TENSOR.ATTN_OUT, "weight"),
    "self_attn.o_proj.bias": (MODEL_TENSOR.ATTN_OUT, "bias"),
    "self_attn.sinks": (MODEL_TENSOR.ATTN_SINKS, "weight"),
    "post_attention_layernorm.weight": (MODEL_TENSOR.ATTN_POST_NORM, "weight"),
    "mlp.router.weight": (MODEL_TENSOR.FFN_GATE_INP, "weight"),
    "mlp.router.bias": (MODEL_TENSOR.FFN_GATE_INP, "bias"),
    "mlp.experts.down_proj_bias": (MODEL_TENSOR.FFN_DOWN_EXP, "bias"),
}
# The converter's --fuse-qkv writes q, k and v as the row blocks of one attn_qkv tensor instead.
_QKV_TENSORS = (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V)
# Not one to one: gate_up_proj_{blocks,scales,bias} interleave the rows of ffn_gate_exps (rows 2i) and
# ffn_up_exps (rows 2i+1); down_proj_{blocks,scales} both come from ffn_down_exps.weight.


def gguf_name(tensor: MODEL_TENSOR, suffix: str, layer: int | None = None) -> str:
    return f"{gguf.TENSOR_NAMES[tensor].format(bid=layer)}.{suffix}"


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    file: Path
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # outermost first, as torch and the engine spell it (ggml lists dims innermost first)
    offset: int             # absolute byte offset in `file`
    nbytes: int


@dataclass(frozen=True)
class _Expected:
    shape: tuple[int, ...]
    types: frozenset[GGMLQuantizationType]


class GGUFCheckpoint:
    """A gpt-oss model in one GGUF file or a set of split files: its config, and its tensors mapped.

    Opening reads the headers (metadata and tensor table) only; tensor data is mapped when
    `read_weights` runs.

    Raises:
        CheckpointError: a file that is not a readable GGUF (truncated, corrupt), another
            architecture, split files that do not belong together.
        ConfigError: metadata missing or outside what gpt-oss uses; the message names the key.
        TokenizerError: a vocabulary that is not o200k_harmony's.
    """

    def __init__(self, files: list[str | Path]):
        self.files = [Path(f) for f in files]
        self.tensors: dict[str, GGUFTensor] = {}
        metadata: dict[str, Any] = {}
        vocab_size = 0
        for index, file in enumerate(self.files):
            reader, fields = _open(file)
            _check_split(file, fields, index, len(self.files))
            if index == 0:
                metadata = fields
                architecture = metadata.get(Keys.General.ARCHITECTURE)
                if architecture != ARCHITECTURE:
                    raise CheckpointError(f"{file}: the GGUF holds a model of architecture {architecture!r}; "
                                          f"this engine runs {ARCHITECTURE!r} only")
                vocab_size = _check_vocabulary(file, reader, metadata)
            for tensor in reader.tensors:
                if tensor.name in self.tensors:
                    raise CheckpointError(f"{file}: tensor {tensor.name!r} is also in "
                                          f"{self.tensors[tensor.name].file.name}")
                shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
                self.tensors[tensor.name] = GGUFTensor(tensor.name, file, tensor.tensor_type, shape,
                                                       int(tensor.data_offset), int(tensor.n_bytes))
            del reader  # unmaps the header pages; tensor data is mapped again, privately, when read
        expected = metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
        if expected is not None and expected != len(self.tensors):
            raise CheckpointError(f"{self.files[0]}: the split files hold {len(self.tensors)} tensors, their "
                                  f"metadata says {expected}")
        try:
            self.config = model_config(metadata, vocab_size)
        except ConfigError as e:
            raise ConfigError(f"{self.files[0]}: {e}") from None
        self.tensor_types = dict(Counter(t.type.name for t in self.tensors.values()).most_common())
        self._storages: dict[Path, torch.UntypedStorage] = {}
        logger.info("%s: %d tensors, by type %s", self.files[0].name, len(self.tensors), self.tensor_types)

    def read_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """All model tensors, as views of the mapped files, in three parts: under canonical names
        (engine.weights), the float tensors and the dense tensors stored in Q8_0 (ggml's blocks uint8
        [rows, in/32, 34]); and the MXFP4 experts as ggml's blocks uint8 [E, rows, in/32, 17], under
        the names of `engine.model.GgmlMLPExperts`' buffers ("model.layers.N.mlp.experts.gate_blocks").

        Raises:
            CheckpointError: one message listing every missing, unexpected or mis-shaped tensor and
                every tensor of a type the engine cannot use (with its type).
        """
        config = self.config
        layers = range(config.num_hidden_layers)
        fused = {n for n in layers if gguf_name(MODEL_TENSOR.ATTN_QKV, "weight", n) in self.tensors}
        self._check_complete(_expected(config, fused))
        tensors: dict[str, torch.Tensor] = {}
        q8_0: dict[str, torch.Tensor] = {}
        experts: dict[str, torch.Tensor] = {}

        def take(canonical: str, name: str, rows: tuple[int, int] | None = None) -> None:
            tensor = self._get(name)
            if rows is not None:
                tensor = tensor.narrow(0, *rows)
            (q8_0 if self.tensors[name].type == GGMLQuantizationType.Q8_0 else tensors)[canonical] = tensor

        for canonical, (tensor, suffix) in _TOP_TABLE.items():
            take(canonical, gguf_name(tensor, suffix))
        row_blocks = dict(zip(_QKV_TENSORS, ((0, config.q_width), (config.q_width, config.kv_width),
                                             (config.q_width + config.kv_width, config.kv_width))))
        for n in layers:
            prefix = f"model.layers.{n}."
            for suffix, (tensor, part) in _LAYER_TABLE.items():
                if n in fused and tensor in row_blocks:
                    take(prefix + suffix, gguf_name(MODEL_TENSOR.ATTN_QKV, part, n), row_blocks[tensor])
                else:
                    take(prefix + suffix, gguf_name(tensor, part, n))
            gate_bias = self._get(gguf_name(MODEL_TENSOR.FFN_GATE_EXP, "bias", n))  # [E, I]
            up_bias = self._get(gguf_name(MODEL_TENSOR.FFN_UP_EXP, "bias", n))
            # Unit i's gate and up outputs are rows 2i and 2i+1 of gate_up.
            tensors[prefix + "mlp.experts.gate_up_proj_bias"] = torch.stack((gate_bias, up_bias), dim=-1).flatten(1)
            for buffer, tensor in (("gate_blocks", MODEL_TENSOR.FFN_GATE_EXP), ("up_blocks", MODEL_TENSOR.FFN_UP_EXP),
                                   ("down_blocks", MODEL_TENSOR.FFN_DOWN_EXP)):
                experts[prefix + "mlp.experts." + buffer] = self._get(gguf_name(tensor, "weight", n))
        return tensors, q8_0, experts

    def _get(self, name: str) -> torch.Tensor:
        """A tensor as a view of its mapped file: float types as themselves, block types as their bytes
        [..., blocks per row, bytes per block]."""
        info = self.tensors[name]
        storage = self._storages.get(info.file)
        if storage is None:
            storage = self._storages[info.file] = map_file(info.file)
        if info.type in _FLOAT_DTYPES:
            return mapped_tensor(storage, info.offset, info.nbytes, _FLOAT_DTYPES[info.type], info.shape)
        block, nbytes = gguf.GGML_QUANT_SIZES[info.type]
        shape = (*info.shape[:-1], info.shape[-1] // block, nbytes)
        return mapped_tensor(storage, info.offset, info.nbytes, torch.uint8, shape)

    def _check_complete(self, expected: dict[str, _Expected]) -> None:
        problems = []
        missing = [name for name in expected if name not in self.tensors]
        if missing:
            problems.append(f"missing tensor(s): {', '.join(missing)}")
        unexpected = [f"{name} (in {info.file.name})" for name, info in self.tensors.items()
                      if name not in expected]
        if unexpected:
            problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
        for name, want in expected.items():
            info = self.tensors.get(name)
            if info is None:
                continue
            if info.type not in want.types:
                problems.append(f"{info.file.name}: tensor {name!r} has type {info.type.name}, which the engine "
                                f"cannot use there (expected {' or '.join(sorted(t.name for t in want.types))})")
            elif info.shape != want.shape:
                problems.append(f"{info.file.name}: tensor {name!r} has shape {list(info.shape)}, expected "
                                f"{list(want.shape)}")
        if problems:
            raise CheckpointError(f"{self.files[0]}: the GGUF does not match its metadata:\n  "
                                  + "\n  ".join(problems))


def _expected(config: ModelConfig, fused_qkv: set[int]) -> dict[str, _Expected]:
    """The GGUF tensors a gpt-oss model of this config consists of, with the types the engine takes."""
    specs = canonical_specs(config)
    E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size

    def like(canonical: str) -> _Expected:
        spec = specs[canonical]
        return _Expected(spec.shape, _DENSE_TYPES if spec.kind == "dense" else _SMALL_TYPES)

    expected = {gguf_name(tensor, suffix): like(canonical) for canonical, (tensor, suffix) in _TOP_TABLE.items()}
    qkv_rows = config.q_width + 2 * config.kv_width
    for n in range(config.num_hidden_layers):
        for suffix, (tensor, part) in _LAYER_TABLE.items():
            if not (n in fused_qkv and tensor in _QKV_TENSORS):
                expected[gguf_name(tensor, part, n)] = like(f"model.layers.{n}.{suffix}")
        if n in fused_qkv:
            expected[gguf_name(MODEL_TENSOR.ATTN_QKV, "weight", n)] = _Expected((qkv_rows, D), _DENSE_TYPES)
            expected[gguf_name(MODEL_TENSOR.ATTN_QKV, "bias", n)] = _Expected((qkv_rows,), _SMALL_TYPES)
        for tensor, shape in ((MODEL_TENSOR.FFN_GATE_EXP, (E, I, D)), (MODEL_TENSOR.FFN_UP_EXP, (E, I, D)),
                              (MODEL_TENSOR.FFN_DOWN_EXP, (E, D, I))):
            expected[gguf_name(tensor, "weight", n)] = _Expected(shape, _EXPERT_TYPES)
        for tensor in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP):
            expected[gguf_name(tensor, "bias", n)] = _Expected((E, I), _SMALL_TYPES)
    return expected


def hf_layout_experts(experts: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """read_weights' experts -> `engine.model.MLPExperts`' blocks and scales (gate/up rows interleaved:
    row 2i gate unit i, row 2i+1 up unit i) on device, for kernels that read the Hugging Face layout
    (CUDA). Each tensor is copied to the device as it is and rewritten there, a layer at a time."""
    out = {}
    for name in [n for n in experts if n.endswith(".gate_blocks")]:
        prefix = name.removesuffix("gate_blocks")
        gate, up, down = (_hf_blocks(experts[prefix + part].to(device)) for part in ("gate_blocks", "up_blocks",
                                                                                     "down_blocks"))
        out[prefix + "gate_up_proj_blocks"] = torch.stack((gate[0], up[0]), dim=2).flatten(1, 2)  # [E, 2I, nb, 16]
        out[prefix + "gate_up_proj_scales"] = torch.stack((gate[1], up[1]), dim=2).flatten(1, 2)  # [E, 2I, nb]
        out[prefix + "down_proj_blocks"], out[prefix + "down_proj_scales"] = down
    return out


def _hf_blocks(ggml: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's MXFP4 blocks [..., nb, 17] -> Hugging Face blocks [..., nb, 16] and scales [..., nb]."""
    nibbles = torch.cat((ggml[..., 1:] & 0x0F, ggml[..., 1:] >> 4), dim=-1)  # [..., nb, 32], element order
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4), ggml[..., 0].contiguous()


def model_config(metadata: dict[str, Any], vocab_size: int) -> ModelConfig:
    """The ModelConfig of a gpt-oss GGUF's metadata (keys as llama.cpp's converter writes them).

    Raises:
        ConfigError: a missing key, or one whose value the engine does not implement (names the key).
    """
    def key(template: str) -> str:
        return template.format(arch=ARCHITECTURE)

    def need(template: str) -> Any:
        if key(template) not in metadata:
            raise ConfigError(f"GGUF metadata key {key(template)!r} is missing")
        return metadata[key(template)]

    def get(template: str, default: Any) -> Any:
        return metadata.get(key(template), default)

    for template in (Keys.Rope.SCALING_ATTN_FACTOR, Keys.Rope.SCALING_YARN_ATTN_FACTOR,
                     Keys.Rope.SCALING_YARN_EXT_FACTOR, Keys.Rope.SCALING_YARN_LOG_MUL):
        if key(template) in metadata:
            raise ConfigError(f"GGUF metadata key {key(template)!r} is set ({metadata[key(template)]!r}); this "
                              f"engine implements gpt-oss's YaRN only (attention factor 0.1·ln(factor) + 1)")
    scaling = need(Keys.Rope.SCALING_TYPE)
    if scaling != "yarn":
        raise ConfigError(f"GGUF metadata key {key(Keys.Rope.SCALING_TYPE)!r} is {scaling!r}; gpt-oss uses 'yarn'")
    theta = _decimal(need(Keys.Rope.FREQ_BASE))
    if _decimal(get(Keys.Rope.FREQ_BASE_SWA, theta)) != theta:
        raise ConfigError(f"GGUF metadata key {key(Keys.Rope.FREQ_BASE_SWA)!r} differs from the rope base "
                          f"{theta}; gpt-oss uses one for all layers")
    layers, hidden = need(Keys.LLM.BLOCK_COUNT), need(Keys.LLM.EMBEDDING_LENGTH)
    heads = need(Keys.Attention.HEAD_COUNT)
    head_dim = get(Keys.Attention.KEY_LENGTH, None)
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads  # llama.cpp's default
    for template in (Keys.Attention.VALUE_LENGTH, Keys.Rope.DIMENSION_COUNT):
        if get(template, head_dim) != head_dim:
            raise ConfigError(f"GGUF metadata key {key(template)!r} is {get(template, head_dim)}, expected the "
                              f"head size {head_dim} (gpt-oss rotates whole heads, of equal key and value sizes)")
    return ModelConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=need(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH),
        num_attention_heads=heads,
        num_key_value_heads=need(Keys.Attention.HEAD_COUNT_KV),
        head_dim=head_dim,
        num_local_experts=need(Keys.LLM.EXPERT_COUNT),
        num_experts_per_tok=need(Keys.LLM.EXPERT_USED_COUNT),
        vocab_size=vocab_size,
        rms_norm_eps=_decimal(need(Keys.Attention.LAYERNORM_RMS_EPS)),
        rope_theta=theta,
        rope_scaling=YarnScaling(
            factor=_decimal(need(Keys.Rope.SCALING_FACTOR)),
            beta_fast=_decimal(get(Keys.Rope.SCALING_YARN_BETA_FAST, 32.0)),
            beta_slow=_decimal(get(Keys.Rope.SCALING_YARN_BETA_SLOW, 1.0)),
            original_max_position_embeddings=need(Keys.Rope.SCALING_ORIG_CTX_LEN),
            truncate=False,  # gpt-oss's YaRN; llama.cpp itself rounds the correction range
        ),
        max_position_embeddings=need(Keys.LLM.CONTEXT_LENGTH),
        sliding_window=need(Keys.Attention.SLIDING_WINDOW),
        layer_types=_layer_types(get(Keys.Attention.SLIDING_WINDOW_PATTERN, None), layers),
        # Not in the metadata: llama.cpp hard-codes gpt-oss's SwiGLU clamp 7.0 and alpha 1.702, as we do.
        swiglu_limit=7.0,
    )


def _layer_types(pattern: Any, layers: Any) -> tuple[str, ...]:
    """Which layers use the sliding window, as llama.cpp's load_swa_pattern reads it: absent, every other
    layer from the first (gpt-oss); a number n, all but every n-th; else one flag per layer."""
    if not isinstance(layers, int):
        return ()  # ModelConfig reports the bad layer count
    if pattern is None:
        return alternating_layer_types(layers)
    if isinstance(pattern, int):
        return tuple(SLIDING if pattern == 0 or i % pattern < pattern - 1 else FULL for i in range(layers))
    return tuple(SLIDING if flag else FULL for flag in pattern)


def _decimal(value: Any) -> Any:
    """GGUF stores these floats as float32: the shortest decimal that rounds to it is the value the
    converter was given (1e-05, not 9.999999747378752e-06), so that configs compare equal."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


class _Reader(gguf.GGUFReader):
    """GGUFReader with arrays read whole: the stock reader makes one numpy view per element, which
    for o200k's 201 088 tokens and 446 189 merges takes it 10-25 s. String arrays become one byte span
    (read with `_strings`), numeric arrays one numpy array."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        item_type = self._get(orig_offs, np.uint32)
        length = self._get(orig_offs + 4, np.uint64)
        start, count = orig_offs + 12, int(length[0])
        if item_type[0] == GGUFValueType.STRING:
            data, end = memoryview(self.data), start
            for _ in range(count):  # each string: a little-endian u64 length, then its bytes
                end += 8 + int.from_bytes(data[end:end + 8], "little")
                if end > len(data):
                    raise ValueError(f"a string array at byte {orig_offs} runs past the end of the file")
            span = self._get(start, np.uint8, end - start)
            return end - orig_offs, [item_type, length, span], [2], [GGUFValueType.ARRAY, GGUFValueType.STRING]
        value_type = GGUFValueType(int(item_type[0]))
        numpy_type = self.gguf_scalar_to_np.get(value_type)
        if numpy_type is None:  # arrays of arrays: the stock reader's way
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(start, numpy_type, count)
        if len(values) != count:
            raise ValueError(f"an array at byte {orig_offs} runs past the end of the file")
        return 12 + values.nbytes, [item_type, length, values], [2], [GGUFValueType.ARRAY, value_type]


def _open(file: Path) -> tuple[_Reader, dict[str, Any]]:
    """The file's reader and its metadata."""
    try:
        reader = _Reader(file)
        metadata = _metadata(reader)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: GGUF file not found") from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        # numpy and the reader report a cut-off or garbled header or tensor table in many ways
        raise CheckpointError(f"{file}: not a readable GGUF file, truncated or corrupt ({e})") from None
    if reader.byte_order != "I":
        raise CheckpointError(f"{file}: a big-endian GGUF; this engine reads little-endian files only")
    return reader, metadata


def _metadata(reader: _Reader) -> dict[str, Any]:
    """The metadata's values, but of arrays only those the config reads (the tokenizer's are read where
    they are checked)."""
    values = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or not field.types:
            continue  # the reader's own entries for the header
        if field.types[0] != GGUFValueType.ARRAY:
            values[name] = field.contents()
        elif name in _ARRAYS_READ:
            values[name] = field.parts[field.data[0]].tolist()
    return values


def _strings(reader: _Reader, key: str) -> Iterator[str]:
    field = reader.fields[key]
    span = memoryview(field.parts[field.data[0]])
    at = 0
    while at < len(span):
        n = int.from_bytes(span[at:at + 8], "little")
        yield str(span[at + 8:at + 8 + n], "utf-8")
        at += 8 + n


def _check_split(file: Path, fields: dict[str, Any], index: int, count: int) -> None:
    number, total = fields.get(Keys.Split.LLM_KV_SPLIT_NO, 0), fields.get(Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    if (number, total) != (index, count):
        raise CheckpointError(f"{file}: the GGUF says it is split file {number + 1} of {total}, but was loaded as "
                              f"{index + 1} of {count}")


def _check_vocabulary(file: Path, reader: _Reader, metadata: dict[str, Any]) -> int:
    """Checks that the GGUF's tokenizer is o200k_harmony (model, pre-tokenizer, every token); returns
    the vocabulary size (its number of tokens)."""
    model, pre = metadata.get(Keys.Tokenizer.MODEL), metadata.get(Keys.Tokenizer.PRE)
    field = reader.fields.get(Keys.Tokenizer.LIST)
    problem = None
    if (model, pre) != ("gpt2", _PRE_TOKENIZER):
        problem = (f"tokenizer model {model!r} with pre-tokenizer {pre!r}, expected byte-level BPE ('gpt2') "
                   f"with {_PRE_TOKENIZER!r}")
    elif field is None or field.types != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        problem = f"no token list ({Keys.Tokenizer.LIST})"
    else:
        try:
            o200k.check_byte_level_vocab(_strings(reader, Keys.Tokenizer.LIST))
        except (ValueError, UnicodeDecodeError) as e:
            problem = str(e)
    if problem:
        raise TokenizerError(f"{file}: the vocabulary is not o200k_harmony's: {problem}")
    return int(field.parts[field.data[0] - 1][0])  # the array's length precedes its strings
