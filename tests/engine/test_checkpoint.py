"""SafetensorsCheckpoint and Engine.load against damaged checkpoints, one test per kind of damage.

Every test works on its own copy of the session's tiny checkpoint, made with hard links; a file is
replaced by a real copy before it is modified, so the shared fixture is never touched (the autouse
guard below checks that). Each failure must name the file, the tensor (where there is one) and what
was expected.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import Engine
from engine.checkpoint import INDEX_NAME, CheckpointError, SafetensorsCheckpoint
from engine.config import ConfigError, ModelConfig
from engine.weights import canonical_specs, file_specs

LAYOUTS = ["hf", "original"]
# A tensor of the first layer, per layout: the per-layer tensors sit in a small shard of their own.
LAYER_WEIGHT = {"hf": "model.layers.0.self_attn.o_proj.weight", "original": "block.0.attn.out.weight"}
LAYER_BIAS = {"hf": "model.layers.1.self_attn.o_proj.bias", "original": "block.1.attn.out.bias"}
GATE_UP_SCALES = {"hf": "model.layers.0.mlp.experts.gate_up_proj_scales", "original": "block.0.mlp.mlp1_weight.scales"}
DOWN_SCALES = {"hf": "model.layers.1.mlp.experts.down_proj_scales", "original": "block.1.mlp.mlp2_weight.scales"}
GATE_UP_BLOCKS = {"hf": "model.layers.0.mlp.experts.gate_up_proj_blocks", "original": "block.0.mlp.mlp1_weight.blocks"}
UNEMBEDDING = {"hf": "lm_head.weight", "original": "unembedding.weight"}


# ----------------------------------------------------------------------------------------------
# Helpers


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def fixture_untouched(tiny_dir):
    """The session checkpoint must come out of every test exactly as it went in."""
    before = _snapshot(tiny_dir)
    yield
    assert _snapshot(tiny_dir) == before


@pytest.fixture
def root(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint made of hard links (cheap); see `own` before writing."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_dir, dst, copy_function=os.link)
    return dst


def model_dir(root: Path, layout: str) -> Path:
    return root if layout == "hf" else root / "original"


def own(path: Path) -> Path:
    """Replaces a hard link by a private copy, so that writing it cannot reach the session fixture."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    return path


def weight_map(directory: Path) -> dict[str, str]:
    return json.loads((directory / INDEX_NAME).read_text())["weight_map"]


def write_weight_map(directory: Path, mapping: dict[str, str]) -> None:
    index_path = directory / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"] = mapping
    index_path.unlink()
    index_path.write_text(json.dumps(index, indent=2))


def shard_of(directory: Path, name: str) -> Path:
    return directory / weight_map(directory)[name]


def rewrite_shard(shard: Path, change) -> None:
    """Rewrites a shard with the safetensors library after `change(tensors)` edited its dict."""
    tensors = {name: t.clone() for name, t in load_file(shard).items()}
    change(tensors)
    shard.unlink()  # never write through the hard link
    save_file(tensors, shard, metadata={"format": "pt"})


def header_of(shard: Path) -> dict:
    with open(shard, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def load_error(directory: Path, error=CheckpointError) -> str:
    with pytest.raises(error) as info:
        Engine.load(directory, dtype="float32")
    return str(info.value)


def assert_mentions(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in error message:\n{message}"


def file_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read by the safetensors library."""
    tensors = {}
    for file in sorted(set(weight_map(directory).values())):
        tensors.update(load_file(directory / file))
    return tensors


# ----------------------------------------------------------------------------------------------
# A valid checkpoint


@pytest.mark.parametrize("layout", LAYOUTS)
def test_valid_checkpoint_matches_the_safetensors_library_bit_for_bit(tiny_dir, layout):
    directory = model_dir(tiny_dir, layout)
    ckpt = SafetensorsCheckpoint(directory)
    config = ModelConfig.from_file(directory / "config.json")
    assert set(ckpt.names()) == set(weight_map(directory)) == set(file_specs(config, layout))
    for file in sorted(set(weight_map(directory).values())):
        reference = load_file(directory / file)
        for name, expected in reference.items():
            ours = ckpt.get(name)
            assert ours.dtype == expected.dtype and ours.shape == expected.shape, name
            assert torch.equal(ours.contiguous().view(torch.uint8), expected.contiguous().view(torch.uint8)), name
            info = ckpt.info(name)
            assert info.file == directory / file and info.dtype in ("BF16", "U8")
            assert info.shape == tuple(expected.shape)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_are_memory_mapped_views(tiny_dir, layout):
    directory = model_dir(tiny_dir, layout)
    ckpt = SafetensorsCheckpoint(directory)
    by_file: dict[Path, list[torch.Tensor]] = {}
    for name in ckpt.names():
        tensor, info = ckpt.get(name), ckpt.info(name)
        storage = tensor.untyped_storage()
        # The storage is the whole mapped shard and the tensor starts at its data offset: no copy.
        assert storage.nbytes() == info.file.stat().st_size, name
        assert tensor.data_ptr() == storage.data_ptr() + info.begin, name
        assert tensor.is_contiguous()
        by_file.setdefault(info.file, []).append(tensor)
    assert len(by_file) == 3
    for file, tensors in by_file.items():
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1, file
    # Asking again maps nothing new.
    name = LAYER_WEIGHT[layout]
    assert ckpt.get(name).untyped_storage().data_ptr() == ckpt.get(name).untyped_storage().data_ptr()
    big = ckpt.get(UNEMBEDDING[layout])
    assert big.untyped_storage().nbytes() == shard_of(directory, UNEMBEDDING[layout]).stat().st_size


def test_unknown_tensor_name(tiny_dir):
    ckpt = SafetensorsCheckpoint(tiny_dir)
    assert "no.such.tensor" not in ckpt
    with pytest.raises(CheckpointError) as info:
        ckpt.get("no.such.tensor")
    assert_mentions(str(info.value), "no.such.tensor", str(tiny_dir))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_without_index_reads_every_shard(root, layout):
    directory = model_dir(root, layout)
    expected = file_tensors(directory)
    (directory / INDEX_NAME).unlink()
    ckpt = SafetensorsCheckpoint(directory)
    assert sorted(ckpt.names()) == sorted(expected)
    engine = Engine.load(directory, dtype="float32")
    assert torch.equal(engine.model.lm_head.weight, expected[UNEMBEDDING[layout]].float())


# ----------------------------------------------------------------------------------------------
# 1. Missing shard


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_shard(root, layout):
    directory = model_dir(root, layout)
    shard = shard_of(directory, LAYER_WEIGHT[layout])
    shard.unlink()
    message = load_error(directory)
    assert_mentions(message, str(shard), INDEX_NAME, "do not exist")


# ----------------------------------------------------------------------------------------------
# 2. Truncated shard


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_shard(root, layout):
    directory = model_dir(root, layout)
    shard = own(shard_of(directory, LAYER_WEIGHT[layout]))
    size = shard.stat().st_size
    os.truncate(shard, size - 100)
    header = header_of(shard)
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    message = load_error(directory)
    assert_mentions(message, str(shard), repr(last), "truncated", str(size), str(size - 100))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_large_shard(root, layout):
    directory = model_dir(root, layout)
    name = UNEMBEDDING[layout]
    shard = own(shard_of(directory, name))
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    message = load_error(directory)
    assert_mentions(message, str(shard), repr(name), "truncated", f"needs bytes up to {size}",
                    f"has {size // 2}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shard_cut_inside_its_header(root, layout):
    directory = model_dir(root, layout)
    shard = own(shard_of(directory, LAYER_WEIGHT[layout]))
    (header_length,) = struct.unpack("<Q", shard.read_bytes()[:8])
    os.truncate(shard, 8 + header_length // 2)
    message = load_error(directory)
    assert_mentions(message, str(shard), "header", str(header_length), str(8 + header_length // 2))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("length", [0, 5])
def test_shard_too_short_for_a_header(root, layout, length):
    directory = model_dir(root, layout)
    shard = own(shard_of(directory, LAYER_WEIGHT[layout]))
    os.truncate(shard, length)
    message = load_error(directory)
    assert_mentions(message, str(shard), "truncated", f"{length} bytes", "header")


# ----------------------------------------------------------------------------------------------
# 3. Tensor missing from the index


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_missing_from_the_index(root, layout):
    directory = model_dir(root, layout)
    name = LAYER_BIAS[layout]
    mapping = weight_map(directory)
    shard = mapping.pop(name)
    write_weight_map(directory, mapping)
    message = load_error(directory)
    assert_mentions(message, str(directory / INDEX_NAME), repr(name), shard, "missing from the index")


# ----------------------------------------------------------------------------------------------
# 4. Tensor missing from the file


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_missing_from_its_shard(root, layout):
    directory = model_dir(root, layout)
    name = LAYER_BIAS[layout]
    shard = shard_of(directory, name)
    rewrite_shard(shard, lambda tensors: tensors.pop(name))
    message = load_error(directory)
    assert_mentions(message, str(directory / INDEX_NAME), repr(name), shard.name, "does not contain it")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_missing_everywhere(root, layout):
    directory = model_dir(root, layout)
    name = LAYER_BIAS[layout]
    shard = shard_of(directory, name)
    rewrite_shard(shard, lambda tensors: tensors.pop(name))
    mapping = weight_map(directory)
    del mapping[name]
    write_weight_map(directory, mapping)
    message = load_error(directory)
    assert_mentions(message, str(directory), "missing tensor", name)


# ----------------------------------------------------------------------------------------------
# 5. Unexpected tensor


def _add_extra_tensor(directory: Path, layout: str) -> tuple[str, Path]:
    extra = {"hf": "model.layers.0.mlp.shared_expert.weight", "original": "block.0.mlp.shared.weight"}[layout]
    shard = shard_of(directory, LAYER_WEIGHT[layout])
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(extra, torch.zeros(4, 4, dtype=torch.bfloat16)))
    mapping = weight_map(directory)
    mapping[extra] = shard.name
    write_weight_map(directory, mapping)
    return extra, shard


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unexpected_tensor(root, layout):
    directory = model_dir(root, layout)
    extra, _ = _add_extra_tensor(directory, layout)
    message = load_error(directory)
    assert_mentions(message, str(directory), "unexpected tensor", extra)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unexpected_tensor_names_its_shard(root, layout):
    directory = model_dir(root, layout)
    extra, shard = _add_extra_tensor(directory, layout)
    message = load_error(directory)
    assert_mentions(message, shard.name, extra)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_stored_in_two_shards(root, layout):
    directory = model_dir(root, layout)
    name = UNEMBEDDING[layout]
    other = shard_of(directory, LAYER_WEIGHT[layout])
    rewrite_shard(other, lambda tensors: tensors.__setitem__(name, torch.zeros(2, dtype=torch.bfloat16)))
    message = load_error(directory)
    assert_mentions(message, repr(name), "twice", str(other), str(shard_of(directory, name)))


# ----------------------------------------------------------------------------------------------
# 6. Wrong shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrong_shape(root, layout):
    directory = model_dir(root, layout)
    name = LAYER_WEIGHT[layout]
    shard = shard_of(directory, name)
    good = tuple(load_file(shard)[name].shape)
    bad = (good[0], good[1] + 16)
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(name, torch.zeros(bad, dtype=torch.bfloat16)))
    message = load_error(directory)
    assert_mentions(message, shard.name, repr(name), f"shape {list(bad)}", f"expected {list(good)}")


def test_wrong_shape_of_the_fused_qkv(root):
    directory = root / "original"
    name = "block.1.attn.qkv.weight"
    shard = shard_of(directory, name)
    good = tuple(load_file(shard)[name].shape)
    assert good == ((4 + 2 * 2) * 16, 64)  # (H + 2K)·head_dim rows for the tiny preset
    bad = (good[0] - 16, good[1])  # one kv head short
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(name, torch.zeros(bad, dtype=torch.bfloat16)))
    message = load_error(directory)
    assert_mentions(message, shard.name, repr(name), f"shape {list(bad)}", f"expected {list(good)}")


def test_wrong_shape_against_a_different_config(root):
    """Weights of one preset under the config of another: every layer tensor is reported."""
    config = json.loads((root / "config.json").read_text())
    config["intermediate_size"] = 96
    (root / "config.json").unlink()
    (root / "config.json").write_text(json.dumps(config))
    message = load_error(root)
    assert_mentions(message, "model.layers.0.mlp.experts.gate_up_proj_blocks",
                    "model.layers.1.mlp.experts.down_proj_scales", "expected [4, 192, 2, 16]")


# ----------------------------------------------------------------------------------------------
# 7. Wrong dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which, stored_as, expected", [
    ("weight", torch.float32, ("F32", "BF16")),
    ("weight", torch.float16, ("F16", "BF16")),
    ("blocks", torch.int8, ("I8", "U8")),
])
def test_wrong_dtype(root, layout, which, stored_as, expected):
    directory = model_dir(root, layout)
    name = (LAYER_WEIGHT if which == "weight" else GATE_UP_BLOCKS)[layout]
    shard = shard_of(directory, name)
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(name, tensors[name].to(stored_as)))
    message = load_error(directory)
    found, wanted = expected
    assert_mentions(message, shard.name, repr(name), f"dtype {found}", f"expected {wanted}")


# ----------------------------------------------------------------------------------------------
# 8. Corrupt JSON


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupt_config_json(root, layout):
    path = own(model_dir(root, layout) / "config.json")
    path.write_text(path.read_text()[:-30])
    message = load_error(path.parent, ConfigError)
    assert_mentions(message, str(path), "JSON")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupt_index_json(root, layout):
    path = own(model_dir(root, layout) / INDEX_NAME)
    path.write_text(path.read_text()[:-30])
    message = load_error(path.parent)
    assert_mentions(message, str(path), "JSON")


@pytest.mark.parametrize("content", [{"metadata": {}}, {"weight_map": ["model.norm.weight"]},
                                     {"weight_map": {"model.norm.weight": 3}}, [1, 2]])
def test_index_without_a_weight_map(root, content):
    path = root / INDEX_NAME
    path.unlink()
    path.write_text(json.dumps(content))
    message = load_error(root)
    assert_mentions(message, str(path), "weight_map")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupt_shard_header(root, layout):
    directory = model_dir(root, layout)
    shard = own(shard_of(directory, LAYER_WEIGHT[layout]))
    with open(shard, "r+b") as f:
        f.seek(8)
        assert f.read(1) == b"{"
        f.seek(8)
        f.write(b"#")
    message = load_error(directory)
    assert_mentions(message, str(shard), "corrupt safetensors header")


@pytest.mark.parametrize("entry, words", [
    ({"dtype": "BF16", "shape": [4]}, ["malformed"]),
    ({"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}, ["unsupported dtype", "F8_E4M3"]),
    ({"dtype": "BF16", "shape": [4], "data_offsets": [0, 6]}, ["data_offsets", "BF16 [4]"]),
])
def test_malformed_shard_header_entry(root, entry, words):
    shard = root / weight_map(root)["model.norm.weight"]
    header = header_of(shard)
    header["model.norm.weight"] = entry
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = shard.read_bytes()
    (old_length,) = struct.unpack("<Q", data[:8])
    shard.unlink()
    shard.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + old_length:])
    message = load_error(root)
    assert_mentions(message, str(shard), "'model.norm.weight'", *words)


# ----------------------------------------------------------------------------------------------
# 9. MXFP4 scales that do not fit their blocks


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which", ["gate_up", "down"])
def test_mxfp4_scales_do_not_match_their_blocks(root, layout, which):
    directory = model_dir(root, layout)
    name = (GATE_UP_SCALES if which == "gate_up" else DOWN_SCALES)[layout]
    shard = shard_of(directory, name)
    good = tuple(load_file(shard)[name].shape)
    bad = (*good[:-1], good[-1] - 1)  # one 32-value block fewer than the blocks tensor has
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(name, tensors[name][..., :-1].contiguous()))
    message = load_error(directory)
    assert_mentions(message, shard.name, repr(name), f"shape {list(bad)}", f"expected {list(good)}",
                    "MXFP4 scales")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mxfp4_blocks_of_the_wrong_shape(root, layout):
    directory = model_dir(root, layout)
    name = GATE_UP_BLOCKS[layout]
    shard = shard_of(directory, name)
    good = tuple(load_file(shard)[name].shape)
    bad = (*good[:-1], 32)  # 64 values per block: the unpacked nibble count, not the packed bytes
    rewrite_shard(shard, lambda tensors: tensors.__setitem__(name, torch.zeros(bad, dtype=torch.uint8)))
    message = load_error(directory)
    assert_mentions(message, shard.name, repr(name), f"shape {list(bad)}", f"expected {list(good)}", "MXFP4")


# ----------------------------------------------------------------------------------------------
# 10. No model here


def test_missing_model_directory(tmp_path):
    path = tmp_path / "no-such-model"
    message = load_error(path)
    assert_mentions(message, str(path), "not found")


def test_model_path_is_a_file(root):
    path = root / "config.json"
    message = load_error(path)
    assert_mentions(message, str(path), "not found")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_directory_without_safetensors(root, tmp_path, layout):
    directory = tmp_path / "empty" / ("" if layout == "hf" else "original")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir(root, layout) / "config.json", directory / "config.json")
    message = load_error(directory)
    assert_mentions(message, str(directory), INDEX_NAME, "*.safetensors")
    with pytest.raises(CheckpointError):
        SafetensorsCheckpoint(directory)


def test_directory_without_config(tmp_path):
    message = load_error(tmp_path, ConfigError)
    assert_mentions(message, str(tmp_path / "config.json"), "not found")


def test_shards_of_neither_layout(root, tmp_path):
    directory = tmp_path / "neither"
    directory.mkdir()
    shutil.copy(root / "config.json", directory / "config.json")
    save_file({"transformer.wte.weight": torch.zeros(2, 2)}, directory / "model.safetensors")
    message = load_error(directory)
    assert_mentions(message, str(directory), "lm_head.weight", "unembedding.weight")


# ----------------------------------------------------------------------------------------------
# Failures leave nothing behind


def test_intact_model_loads_after_failures(tiny_dir, root):
    directory = root / "original"
    # A run of failures on damaged copies, in both layouts...
    shard_of(root, LAYER_WEIGHT["hf"]).unlink()
    load_error(root)
    os.truncate(own(shard_of(directory, LAYER_WEIGHT["original"])), 100)
    load_error(directory)
    # ...and then loading the intact session checkpoint (both layouts) still works, bit-exact.
    reference = file_tensors(tiny_dir)
    for path in (tiny_dir, tiny_dir / "original"):
        engine = Engine.load(path, dtype="float32")
        state = engine.model.state_dict()
        assert len(state) == len(canonical_specs(engine.config))
        assert torch.equal(state["lm_head.weight"], reference["lm_head.weight"].float())
        assert torch.equal(state["layers.1.self_attn.v_proj.weight"],
                           reference["model.layers.1.self_attn.v_proj.weight"].float())
        assert torch.equal(state["layers.0.mlp.experts.down_proj_blocks"],
                           reference["model.layers.0.mlp.experts.down_proj_blocks"])
        logits = engine.logits([1, 2, 3])
        assert logits.shape == (3, 201088) and torch.isfinite(logits).all()
