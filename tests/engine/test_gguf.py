"""GGUF files, as llama.cpp's own converter writes them from our checkpoints, load as the same model:
a bf16 GGUF as the directory itself, a q8_0 GGUF as the directory's int8 mode plus a Q8_0 embedding;
split files, fused q/k/v and the converter's F16 fall-back included. Other architectures, other
tensor types and damaged files are refused with errors that name the file (and tensor and type)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine import CheckpointError, Engine, TokenizerError, ops
from engine.ops import reference as reference_ops
from engine.config import ModelConfig
from engine.presets import preset_config
from engine.gguf_checkpoint import GGUFCheckpoint, hf_layout_experts
from engine.int8 import dequantize_ggml_q8_0, dequantize_q8_0
from engine.model import Q8Embedding
from engine.model_source import resolve_model
from engine.synthetic import write_model

from tests.engine.transformers_reference import token_ids

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp, converter included
DEFAULT_LLAMA_CPP = "/work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp"
SHAPES = {"tiny": 0, "tiny-odd": 1}  # preset: seed
# Experts that outweigh what the RSS test allows for code pages (13 MB of MXFP4 in 2 layers, against 3 MB).
HEAVY_EXPERTS = replace(preset_config("small", layers=2), num_local_experts=32, intermediate_size=512)
# The converter's q8_0 keeps tensors whose rows are not whole Q8_0 blocks in F16: tiny-odd's o_proj (144 wide).
F16_FALLBACKS = {"tiny": 0, "tiny-odd": 3}


def _converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: from $GPTOSS_LLAMA_CPP_DIR (a llama.cpp tree), else from the
    llama-cpp-python sdist on PyPI, extracted once into the user cache."""
    script = Path(os.environ.get("GPTOSS_LLAMA_CPP_DIR", DEFAULT_LLAMA_CPP)) / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    import platformdirs

    cache = Path(platformdirs.user_cache_dir("gptoss-mcp")) / LLAMA_CPP_PYTHON.replace("==", "-")
    prefix = f"{LLAMA_CPP_PYTHON.replace('-', '_').replace('==', '-')}/vendor/llama.cpp/"
    script = cache / prefix / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    download = cache / "sdist"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           LLAMA_CPP_PYTHON, "-d", str(download)], capture_output=True, text=True)
    archives = list(download.glob("*.tar.gz"))
    if done.returncode or not archives:
        pytest.skip(f"llama.cpp's converter: no {script.name} under $GPTOSS_LLAMA_CPP_DIR or {DEFAULT_LLAMA_CPP}, "
                    f"and `pip download {LLAMA_CPP_PYTHON}` failed: {done.stderr.strip()[-300:]}")
    with tarfile.open(archives[0]) as sdist:  # the converter, its model classes and gguf-py only
        wanted = [m for m in sdist.getmembers() if m.name == prefix + "convert_hf_to_gguf.py"
                  or m.name.startswith((prefix + "gguf-py/", prefix + "conversion/"))]
        sdist.extractall(cache, members=wanted, filter="data")
    shutil.rmtree(download)
    return script


# Runs the converter's main() once per argument list in one process: its imports (torch, transformers)
# take half of a conversion's time.
_CONVERT = """
import os, runpy, sys
script = sys.argv[1]
sys.path.insert(0, os.path.dirname(script))
for arguments in sys.argv[2:]:
    sys.argv = [script, *arguments.split("\\t")]
    runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The two shapes as directories, and converted: "<shape>/bf16" (one file) and "<shape>/q8_0"; tiny's
    q8_0 with fused q/k/v in three split files (its first file's path)."""
    converter = _converter()
    root = tmp_path_factory.mktemp("gguf")
    paths, jobs = {}, []
    for shape, seed in SHAPES.items():
        write_model(root / shape, preset=shape, seed=seed, original=False)
        paths[shape] = root / shape
        conversions = []
        for outtype in ("bf16", "q8_0"):
            extra = ["--fuse-qkv", "--split-max-tensors", "15"] if (shape, outtype) == ("tiny", "q8_0") else []
            out = root / f"{shape}-{outtype}" / f"{shape}-{outtype}.gguf"
            out.parent.mkdir()
            conversions.append("\t".join([str(root / shape), "--outfile", str(out), "--outtype", outtype, *extra]))
            paths[f"{shape}/{outtype}"] = out.with_name(f"{out.stem}-00001-of-00003.gguf") if extra else out
        if shape == "tiny":  # the experts-heavy shape's one conversion goes with tiny's
            write_model(root / "heavy", seed=3, original=False, config=HEAVY_EXPERTS)
            out = root / "heavy-bf16.gguf"
            conversions.append("\t".join([str(root / "heavy"), "--outfile", str(out), "--outtype", "bf16"]))
            paths["heavy"], paths["heavy/bf16"] = root / "heavy", out
        # one process per shape, side by side (each is mostly one Python thread)
        jobs.append(subprocess.Popen([sys.executable, "-c", _CONVERT, str(converter), *conversions],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for job in jobs:
        _, stderr = job.communicate()
        assert job.returncode == 0, f"{' '.join(job.args)} failed:\n{stderr[-2000:]}"
    return paths


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_metadata_gives_the_directorys_config(models, shape):
    expected = ModelConfig.from_file(models[shape] / "config.json")
    layers = expected.num_hidden_layers
    bf16 = GGUFCheckpoint([models[f"{shape}/bf16"]])
    assert bf16.config == expected
    # per layer: 3 MXFP4 experts; 4 BF16 projections; norms (2), biases (4 + router + 3 expert), sinks, router in F32
    assert bf16.tensor_types == {"F32": 12 * layers + 1, "BF16": 4 * layers + 2, "MXFP4": 3 * layers}
    q8_0 = resolve_model(models[f"{shape}/q8_0"])
    assert GGUFCheckpoint([q8_0.path.parent / f for f in q8_0.files]).config == expected


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_bf16_gguf_is_the_directorys_model(models, shape):
    directory = Engine.load(models[shape], dtype="float32")
    gguf = Engine.load(models[f"{shape}/bf16"], dtype="float32")
    assert (gguf.source.kind, gguf.source.files) == ("gguf", [f"{shape}-bf16.gguf"])
    assert gguf.source.tensor_types["MXFP4"] == 3 * gguf.config.num_hidden_layers
    # bf16 and F32 values carry over bit for bit; the MXFP4 experts stay in ggml's layout (read in place)
    # and hold exactly the directory's values: the same nibbles and scale bytes, reordered.
    ours, theirs = gguf.model.state_dict(), directory.model.state_dict()
    assert _without_expert_blocks(ours).keys() == _without_expert_blocks(theirs).keys()
    for name in _without_expert_blocks(ours):
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    for n in range(gguf.config.num_hidden_layers):
        prefix = f"layers.{n}.mlp.experts."
        gate_up = reference_ops.mxfp4_dequantize(theirs[prefix + "gate_up_proj_blocks"],
                                                 theirs[prefix + "gate_up_proj_scales"], torch.float32)
        assert torch.equal(reference_ops.ggml_mxfp4_dequantize(ours[prefix + "gate_blocks"], torch.float32), gate_up[:, 0::2])
        assert torch.equal(reference_ops.ggml_mxfp4_dequantize(ours[prefix + "up_blocks"], torch.float32), gate_up[:, 1::2])
        down = reference_ops.mxfp4_dequantize(theirs[prefix + "down_proj_blocks"], theirs[prefix + "down_proj_scales"],
                                              torch.float32)
        assert torch.equal(reference_ops.ggml_mxfp4_dequantize(ours[prefix + "down_blocks"], torch.float32), down)
    # For a GPU, the experts are rewritten into the directory's layout: the same bytes.
    checkpoint = GGUFCheckpoint([models[f"{shape}/bf16"]])
    rewritten = hf_layout_experts(checkpoint.read_weights()[2], torch.device("cpu"))
    assert len(rewritten) == 4 * gguf.config.num_hidden_layers
    for name, tensor in rewritten.items():
        assert torch.equal(tensor, theirs[name.removeprefix("model.")]), name
    ids = token_ids(seed=31)
    reference = directory.logits(ids)
    # Same weights, same float32 arithmetic; the expert kernels sum each block's products in another
    # order (the inputs are permuted to meet ggml's nibbles): float32 reassociation noise, a few ulps
    # of the largest logit (2^-23 ≈ 1.2e-7 relative each).
    assert ops.active_backend() == "extension"
    assert (gguf.logits(ids) - reference).abs().max().item() <= 1e-6 * reference.abs().max().item()
    if shape == "tiny":
        # no tokenizer.json: the vocabulary was checked, the bundled o200k ranks serve
        assert gguf.tokenizer.encode("Hello world") == [13225, 2375]
        assert gguf.tokenizer.decode([13225, 2375, 200006]) == "Hello world<|start|>"
        # and weights="int8" quantizes a GGUF's bf16 tensors as it does the directory's
        ours = _without_expert_blocks(Engine.load(models[f"{shape}/bf16"], dtype="float32", weights="int8").model.state_dict())
        theirs = _without_expert_blocks(Engine.load(models[shape], dtype="float32", weights="int8").model.state_dict())
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)


def _without_expert_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in state.items() if not ("experts." in name and name.endswith(("blocks", "scales")))}


def _fidelity(reference: torch.Tensor, logits: torch.Tensor) -> tuple[float, float, float]:
    """Top-1 agreement, mean KL(reference || logits) per token, max |dlogit|."""
    ref, ours = reference.log_softmax(-1), logits.log_softmax(-1)
    return ((reference.argmax(-1) == logits.argmax(-1)).float().mean().item(),
            (ref.exp() * (ref - ours)).sum(-1).mean().item(), (reference - logits).abs().max().item())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_q8_0_gguf_is_the_int8_mode_with_a_q8_0_embedding(models, shape):
    gguf = Engine.load(models[f"{shape}/q8_0"], dtype="float32")
    int8 = Engine.load(models[shape], dtype="float32", weights="int8")
    assert gguf.source.tensor_types.get("F16", 0) == F16_FALLBACKS[shape]
    # (the experts as in the bf16 test above: the same values in ggml's layout)
    ours, theirs = _without_expert_blocks(gguf.model.state_dict()), _without_expert_blocks(int8.model.state_dict())
    assert ours.keys() - theirs.keys() == {"embed_tokens.blocks"}
    assert theirs.keys() - ours.keys() == {"embed_tokens.weight"}
    assert isinstance(gguf.model.embed_tokens, Q8Embedding)  # the table stays 8-bit, decoded per row
    # The converter's Q8_0 and our int8 mode round alike: the 8-bit attention and unembedding are
    # bit-identical; the embedding is that rounding of the directory's; F16 fall-backs its float16 rounding.
    rounded_embedding = dequantize_q8_0(*ops.quantize_q8_0(theirs["embed_tokens.weight"]))  # the C++ op: fast
    assert torch.equal(dequantize_ggml_q8_0(ours["embed_tokens.blocks"]), rounded_embedding)
    f16 = []
    for name in ours.keys() & theirs.keys():
        if not torch.equal(ours[name], theirs[name]):
            assert torch.equal(ours[name], theirs[name].half().float()), name
            f16.append(name)
    assert all(name.endswith("self_attn.o_proj.weight") for name in f16) and len(f16) <= F16_FALLBACKS[shape]

    ids = token_ids(seed=32)
    reference, logits = Engine.load(models[shape], dtype="float32").logits(ids), gguf.logits(ids)
    figures = {"gguf q8_0": _fidelity(reference, logits), "int8 mode": _fidelity(reference, int8.logits(ids))}
    for name, (top1, kl, dlogit) in figures.items():
        print(f"{shape} {name} vs the bf16 directory (float32): top-1 agreement {top1:.3f}, "
              f"mean KL {kl:.2e}, max |dlogit| {dlogit:.3f}")
        assert top1 >= 0.9, (name, top1)
    # With the embedding (and F16 fall-backs) rounded as the GGUF has them, the int8 mode computes the
    # GGUF's logits: the same weights through the same float32 code (tolerance as above).
    int8.model.embed_tokens.weight = rounded_embedding
    for name in f16:
        module, _, _ = name.rpartition(".")
        int8.model.get_submodule(module).weight = ours[name]
    expected = int8.logits(ids)
    assert (logits - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_split_files_load_from_any_of_them_and_a_missing_one_is_named(models, tmp_path):
    first = models["tiny/q8_0"]
    second = first.with_name(first.name.replace("00001-of", "00002-of"))
    source = resolve_model(second)
    assert source.path == first and source.files == [first.name, second.name, first.name.replace("00001", "00003")]
    for name in source.files[:2]:
        shutil.copy(first.parent / name, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"not found: tiny-q8_0-00003-of-00003\.gguf"):
        Engine.load(tmp_path / first.name)
    # A part renamed to look whole is still recognised as a part.
    shutil.copy(first, tmp_path / "whole.gguf")
    with pytest.raises(CheckpointError, match=r"whole\.gguf: the GGUF says it is split file 1 of 3"):
        Engine.load(tmp_path / "whole.gguf")


def test_another_architecture_is_refused(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"llama\.gguf: .*architecture 'llama'.* 'gpt-oss' only"):
        Engine.load(path)


def _patched(source: Path, target: Path, find: bytes, replace: bytes, after: bytes = b"") -> Path:
    """A copy of a GGUF with the first `find` (after the first `after`) in its header replaced."""
    shutil.copy(source, target)
    with open(target, "r+b") as f:
        header = f.read(32 << 20)  # metadata and tensor table; tiny models' headers are ~11 MB
        at = header.index(find, header.index(after) if after else 0)
        f.seek(at)
        f.write(replace)
    return target


def _set_type(path: Path, tensor: str, ggml_type: int) -> None:
    """Rewrites a tensor's type in the tensor table: name, u32 dims, u64 per dim, then the u32 type."""
    with open(path, "r+b") as f:
        header = f.read(32 << 20)
        at = header.index(len(tensor).to_bytes(8, "little") + tensor.encode()) + 8 + len(tensor)
        dims = int.from_bytes(header[at:at + 4], "little")
        f.seek(at + 4 + 8 * dims)
        f.write(ggml_type.to_bytes(4, "little"))


def test_an_unsupported_tensor_type_is_named_with_its_type(models, tmp_path):
    from gguf import GGMLQuantizationType as T

    path = tmp_path / "types.gguf"
    shutil.copy(models["tiny/bf16"], path)
    _set_type(path, "blk.0.attn_q.weight", T.I16)     # same size as BF16, so the file still parses
    _set_type(path, "blk.1.attn_sinks.weight", T.I32)  # same size as F32
    with pytest.raises(CheckpointError) as error:
        Engine.load(path)
    message = str(error.value)
    assert "types.gguf" in message
    assert "tensor 'blk.0.attn_q.weight' has type I16" in message
    assert "tensor 'blk.1.attn_sinks.weight' has type I32" in message


def test_a_vocabulary_other_than_o200k_is_refused(models, tmp_path):
    # token 0 is "!": make it "?" (same length)
    path = _patched(models["tiny/bf16"], tmp_path / "vocab.gguf", (1).to_bytes(8, "little") + b"!",
                    (1).to_bytes(8, "little") + b"?", after=b"tokenizer.ggml.tokens")
    with pytest.raises(TokenizerError, match=r"vocab\.gguf: the vocabulary is not o200k_harmony's"):
        Engine.load(path)


def test_a_damaged_gguf_is_an_error_naming_the_file(models, tmp_path):
    source = models["tiny/bf16"]
    size = source.stat().st_size
    cases = {"header.gguf": 1000, "tokens.gguf": 5_000_000, "data.gguf": size // 2, "empty.gguf": 0}
    for name, length in cases.items():
        shutil.copy(source, tmp_path / name)
        os.truncate(tmp_path / name, length)
        with pytest.raises(CheckpointError, match=rf"{name}: not a readable GGUF file, truncated or corrupt"):
            Engine.load(tmp_path / name)
    shutil.copy(next(models["tiny"].glob("*.safetensors")), tmp_path / "other.gguf")
    with pytest.raises(CheckpointError, match=r"other\.gguf: not a readable GGUF file.*magic"):
        Engine.load(tmp_path / "other.gguf")


_RSS_SCRIPT = """
import sys
import engine.gguf_checkpoint  # noqa: F401 - imported by both, so that only the weights' memory differs
from engine import Engine
def rss_kb():
    return int(dict(line.split(":", 1) for line in open("/proc/self/status"))["VmRSS"].split()[0])
engine = Engine.load(sys.argv[1], weights=sys.argv[2] or None)
loaded = rss_kb()
engine.logits(list(range(1000, 1048)))
print(loaded, rss_kb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_rss_after_load_and_a_forward_pass_is_that_of_safetensors(models):
    def rss_kb(model: Path, weights: str = "") -> list[int]:
        done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(model), weights], capture_output=True,
                              text=True, check=True)
        return [int(kb) for kb in done.stdout.split()[-2:]]

    # The GGUF path runs code the safetensors path does not (gguf's parser): its pages, ~2 MB here, are
    # allowed. A weight held twice would cost its size: the embedding alone is 25 MB in tiny and 100 MB
    # in the experts-heavy shape, whose 13 MB of experts would be resident right after the load if they
    # were copied or repacked into memory (read in place, they come in as they are used, as a
    # directory's do).
    allowance_kb = 3 << 10
    for directory, gguf, weights in ((models["tiny"], models["tiny/bf16"], ""),
                                     (models["tiny"], models["tiny/q8_0"], "int8"),
                                     (models["heavy"], models["heavy/bf16"], "")):
        ours, theirs = rss_kb(gguf), rss_kb(directory, weights)
        print(f"RSS after load, after load + forward: {gguf.name} {ours[0] / 1024:.1f}, {ours[1] / 1024:.1f} MB; "
              f"directory{' int8' if weights else ''} {theirs[0] / 1024:.1f}, {theirs[1] / 1024:.1f} MB")
        assert ours[0] <= theirs[0] + allowance_kb and ours[1] <= theirs[1] + allowance_kb, (gguf.name, ours, theirs)
