"""The headers of a sharded safetensors checkpoint, read and cross-checked without torch.

Knows the safetensors container and the `model.safetensors.index.json` convention, nothing about the
model. `read_shard_headers` is the check a checkpoint passes before any tensor is mapped
(`engine.checkpoint`), and the one `gptoss-mcp pull` runs after a download, so a damaged shard is
reported with the file and tensor it concerns. Torch-free so that `pull` and the model resolver stay
light.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX_NAME = "model.safetensors.index.json"

# Bytes per element of the safetensors dtypes a gpt-oss checkpoint can hold, plus common ones so that
# a wrong dtype is reported by name rather than as "unknown".
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """The checkpoint on disk is missing, damaged or does not match the model; names file and tensor."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str                # safetensors spelling, e.g. "BF16", "U8"
    shape: tuple[int, ...]
    begin: int                # absolute byte offsets in `file`
    end: int


def shard_files(directory: Path) -> list[str]:
    """The shard file names a checkpoint directory consists of: those its index names, else every
    `*.safetensors` file in it. The files need not exist (`read_shard_headers` checks that).

    Raises:
        CheckpointError: corrupt index, or neither an index nor any shard.
    """
    return _index_and_shards(directory)[1]


def read_shard_headers(directory: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint in `directory`, by name, after checking each shard's header
    against the file's length and the index (when there is one) against the headers.

    Raises:
        CheckpointError: corrupt index or header, missing or truncated shard, index/shard disagreement.
    """
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    expected, files = _index_and_shards(directory)
    missing = [f for f in files if not (directory / f).is_file()]
    if missing and expected is None:  # a dangling link, e.g. into a Hugging Face cache's blobs
        raise CheckpointError(f"{directory}: shard file(s) not readable: "
                              + ", ".join(str(directory / f) for f in missing))
    if missing:
        held = [name for name, file in expected.items() if file == missing[0]]
        raise CheckpointError(
            f"{index_path}: names shard file(s) that do not exist: "
            + ", ".join(str(directory / f) for f in missing)
            + f" ({missing[0]} should hold {len(held)} tensor(s), e.g. {', '.join(held[:3])})")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for info in _read_header(directory / file):
            if info.name in tensors:
                raise CheckpointError(f"tensor {info.name!r} is stored twice: in "
                                      f"{tensors[info.name].file} and {info.file}")
            tensors[info.name] = info
    if expected is not None:
        _check_index(index_path, expected, tensors)
    return tensors


def _index_and_shards(directory: Path) -> tuple[dict[str, str] | None, list[str]]:
    index_path = directory / INDEX_NAME
    if index_path.exists():
        expected = _read_index(index_path)
        return expected, sorted(set(expected.values()))
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no {INDEX_NAME} and no *.safetensors files")
    return None, files


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: expected an object with a 'weight_map' of tensor name -> file")
    return weight_map


def _read_header(path: Path) -> list[TensorInfo]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: truncated or not safetensors: header claims {header_len} "
                                  f"bytes but the file has {size}")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {entry!r}") from None
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r}: unsupported dtype {dtype!r}")
        numel = 1
        for dim in shape:
            numel *= dim
        if end - begin != numel * DTYPE_SIZES[dtype] or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}) do not hold "
                                  f"{dtype} {list(shape)}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} needs bytes up to "
                                  f"{data_start + end} but the file has {size}")
        infos.append(TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end))
    return infos


def _check_index(index_path: Path, expected: dict[str, str], found: dict[str, TensorInfo]) -> None:
    problems = []
    for name, file in expected.items():
        if name not in found:
            problems.append(f"tensor {name!r} is listed for {file} but that file does not contain it")
        elif found[name].file.name != file:
            problems.append(f"tensor {name!r} is listed for {file} but is stored in {found[name].file.name}")
    for name, info in found.items():
        if name not in expected:
            problems.append(f"tensor {name!r} is stored in {info.file.name} but missing from the index")
    if problems:
        raise CheckpointError(f"{index_path} disagrees with the shards:\n  " + "\n  ".join(problems))
