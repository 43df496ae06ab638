"""The checkpoint-name table (engine.weights) against the model, both on-disk layouts and the loaded
Engine: one name per model buffer, the exact original tensor set, identical tensors from either
layout, MXFP4 experts kept packed, and zero-copy dense weights in bfloat16 mode."""

from __future__ import annotations

import json
import re

import pytest
import torch

from engine import Engine
from engine.checkpoint import INDEX_NAME, SafetensorsCheckpoint
from engine.config import ModelConfig
from engine.model import Transformer
from engine.presets import PRESETS
from engine.weights import canonical_specs, file_specs, read_weights

ALL_PRESETS = sorted(PRESETS)

ORIGINAL_LAYER_NAMES = [
    "attn.norm.scale", "attn.qkv.weight", "attn.qkv.bias", "attn.sinks", "attn.out.weight", "attn.out.bias",
    "mlp.norm.scale", "mlp.gate.weight", "mlp.gate.bias", "mlp.mlp1_weight.blocks", "mlp.mlp1_weight.scales",
    "mlp.mlp1_bias", "mlp.mlp2_weight.blocks", "mlp.mlp2_weight.scales", "mlp.mlp2_bias",
]


# ----------------------------------------------------------------------------------------------
# The name table against the model


@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_canonical_names_are_exactly_the_model_buffers(preset, dtype):
    config = PRESETS[preset]
    state = Transformer(config, dtype).state_dict()  # buffers on the meta device: no memory
    specs = canonical_specs(config)
    assert all(name.startswith("model.") or name == "lm_head.weight" for name in specs)
    renamed = {name.removeprefix("model."): spec for name, spec in specs.items()}
    assert len(renamed) == len(specs)  # one-to-one
    assert set(renamed) == set(state)
    for name, spec in renamed.items():
        assert tuple(state[name].shape) == spec.shape, name
        want = {"dense": dtype, "small": torch.float32, "packed": torch.uint8}[spec.kind]
        assert state[name].dtype == want, name


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_hf_file_specs_are_the_canonical_specs(preset):
    config = PRESETS[preset]
    assert file_specs(config, "hf") == canonical_specs(config)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_original_file_specs_have_exactly_the_original_names(preset):
    config = PRESETS[preset]
    specs = file_specs(config, "original")
    expected = ["embedding.weight"]
    for n in range(config.num_hidden_layers):
        expected += [f"block.{n}.{suffix}" for suffix in ORIGINAL_LAYER_NAMES]
    expected += ["norm.scale", "unembedding.weight"]
    assert sorted(specs) == sorted(expected)
    assert len(specs) == len(expected)

    D, E, I, V = config.hidden_size, config.num_local_experts, config.intermediate_size, config.vocab_size
    H, K, Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    rows = (H + 2 * K) * Dh
    for n in range(config.num_hidden_layers):
        b = f"block.{n}."
        assert specs[b + "attn.qkv.weight"].shape == (rows, D)
        assert specs[b + "attn.qkv.bias"].shape == (rows,)
        assert specs[b + "attn.out.weight"].shape == (D, H * Dh)
        assert specs[b + "attn.sinks"].shape == (H,)
        assert specs[b + "mlp.gate.weight"].shape == (E, D)
        assert specs[b + "mlp.mlp1_weight.blocks"].shape == (E, 2 * I, D // 32, 16)
        assert specs[b + "mlp.mlp1_weight.scales"].shape == (E, 2 * I, D // 32)
        assert specs[b + "mlp.mlp2_weight.blocks"].shape == (E, D, I // 32, 16)
        assert specs[b + "mlp.mlp2_weight.scales"].shape == (E, D, I // 32)
        assert specs[b + "mlp.mlp1_bias"].shape == (E, 2 * I)
        assert specs[b + "mlp.mlp2_bias"].shape == (E, D)
    assert specs["embedding.weight"].shape == specs["unembedding.weight"].shape == (V, D)
    for name, spec in specs.items():
        packed = name.endswith((".blocks", ".scales"))
        assert spec.dtype == ("U8" if packed else "BF16"), name


@pytest.mark.parametrize("preset, hf_count, original_count", [
    ("20b-shape", 24 * 19 + 3, 24 * 15 + 3),
    ("120b-shape", 36 * 19 + 3, 36 * 15 + 3),
])
def test_tensor_counts_of_the_real_shapes(preset, hf_count, original_count):
    config = PRESETS[preset]
    assert (hf_count, original_count) == {"20b-shape": (459, 363), "120b-shape": (687, 543)}[preset]
    assert len(file_specs(config, "hf")) == hf_count
    assert len(file_specs(config, "original")) == original_count
    assert file_specs(config, "original")["block.0.attn.qkv.weight"].shape == ((64 + 2 * 8) * 64, 2880)


# ----------------------------------------------------------------------------------------------
# Both layouts read back to the same tensors


@pytest.mark.parametrize("name", ["tiny", "tiny-odd"])
def test_both_layouts_give_bit_identical_canonical_tensors(model_dirs, name):
    root = model_dirs[name]
    config = ModelConfig.from_file(root / "config.json")
    assert ModelConfig.from_file(root / "original" / "config.json") == config
    hf = read_weights(SafetensorsCheckpoint(root), config)
    original = read_weights(SafetensorsCheckpoint(root / "original"), config)
    specs = canonical_specs(config)
    assert list(hf) == list(original) == list(specs)
    for key in specs:
        a, b = hf[key], original[key]
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) == specs[key].shape, key
        assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), key


@pytest.mark.parametrize("name", ["tiny", "tiny-odd"])
def test_qkv_rows_are_q_then_k_then_v(model_dirs, name):
    root = model_dirs[name]
    config = ModelConfig.from_file(root / "config.json")
    hf = SafetensorsCheckpoint(root)
    original = SafetensorsCheckpoint(root / "original")
    Q, KV = config.q_width, config.kv_width
    for n in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            fused = original.get(f"block.{n}.attn.qkv.{kind}")
            assert fused.shape[0] == Q + 2 * KV
            parts = [hf.get(f"model.layers.{n}.self_attn.{p}_proj.{kind}") for p in "qkv"]
            assert torch.equal(torch.cat(parts), fused)
            assert torch.equal(fused[:Q], parts[0])
            assert torch.equal(fused[Q:Q + KV], parts[1])
            assert torch.equal(fused[Q + KV:], parts[2])


# ----------------------------------------------------------------------------------------------
# The loaded Engine


@pytest.fixture(scope="module")
def engines(tiny_dir):
    return {(layout, dtype): Engine.load(tiny_dir if layout == "hf" else tiny_dir / "original", dtype=dtype)
            for layout in ("hf", "original") for dtype in ("bfloat16", "float32")}


def _module_tensors(model: torch.nn.Module):
    """Every buffer and parameter, plus any tensor kept as a plain module attribute (a cache, say)."""
    yield from model.named_buffers()
    yield from model.named_parameters()
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                yield f"{module_name}.{attr}", value
    rope = getattr(model, "rope", None)
    for attr, value in vars(rope).items() if rope is not None else ():
        if isinstance(value, torch.Tensor):
            yield f"rope.{attr}", value


@pytest.mark.parametrize("layout", ["hf", "original"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_mxfp4_experts_stay_packed(engines, layout, dtype):
    engine = engines[layout, dtype]
    engine.logits([5, 6, 7, 8])  # after a forward pass: nothing dequantised may have been cached
    config, model = engine.config, engine.model
    E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
    packed = {"gate_up_proj_blocks": (E, 2 * I, D // 32, 16), "gate_up_proj_scales": (E, 2 * I, D // 32),
              "down_proj_blocks": (E, D, I // 32, 16), "down_proj_scales": (E, D, I // 32)}
    seen = 0
    for name, buffer in model.named_buffers():
        if "experts" in name and re.search(r"(blocks|scales)$", name):
            assert buffer.dtype == torch.uint8, name
            assert tuple(buffer.shape) == packed[name.rsplit(".", 1)[1]], name
            seen += 1
    assert seen == 4 * config.num_hidden_layers
    dequantised = {(E, 2 * I, D), (E, D, I), (E, D, 2 * I), (E, I, D)}
    for name, tensor in _module_tensors(model):
        assert tuple(tensor.shape) not in dequantised, f"{name} has a dequantised expert shape {tuple(tensor.shape)}"


def _shard_size(directory, name: str) -> int:
    mapping = json.loads((directory / INDEX_NAME).read_text())["weight_map"]
    return (directory / mapping[name]).stat().st_size


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_bfloat16_dense_weights_are_zero_copy_views_of_the_files(engines, tiny_dir, layout):
    engine = engines[layout, "bfloat16"]
    directory = tiny_dir if layout == "hf" else tiny_dir / "original"
    ckpt = SafetensorsCheckpoint(directory)
    lm_head = engine.model.lm_head.weight
    assert lm_head.dtype == torch.bfloat16
    unembedding = "lm_head.weight" if layout == "hf" else "unembedding.weight"
    assert lm_head.untyped_storage().nbytes() == _shard_size(directory, unembedding)
    assert lm_head.data_ptr() == lm_head.untyped_storage().data_ptr() + ckpt.info(unembedding).begin
    state = engine.model.state_dict()
    for name, spec in canonical_specs(engine.config).items():
        tensor = state[name.removeprefix("model.")]
        if spec.kind == "small":
            assert tensor.dtype == torch.float32, name
            continue
        # dense (bf16) and packed (uint8) tensors: still the mapped shard, nothing copied
        nbytes = tensor.untyped_storage().nbytes()
        assert nbytes in {p.stat().st_size for p in directory.glob("*.safetensors")}, name
        assert nbytes > tensor.numel() * tensor.element_size(), name


def test_float32_dense_weights_are_copies_but_packed_experts_are_not(engines, tiny_dir):
    engine = engines["hf", "float32"]
    state = engine.model.state_dict()
    for name, spec in canonical_specs(engine.config).items():
        tensor = state[name.removeprefix("model.")]
        if spec.kind == "packed":
            assert tensor.untyped_storage().nbytes() == _shard_size(tiny_dir, name), name
        else:
            assert tensor.dtype == torch.float32, name
            assert tensor.untyped_storage().nbytes() == tensor.numel() * 4, name


def test_both_layouts_load_the_same_model(engines):
    for dtype in ("bfloat16", "float32"):
        hf, original = engines["hf", dtype].model.state_dict(), engines["original", dtype].model.state_dict()
        assert hf.keys() == original.keys()
        for name in hf:
            assert hf[name].dtype == original[name].dtype, name
            assert torch.equal(hf[name], original[name]), name
