"""Memory-mapped access to the tensors of a sharded safetensors checkpoint.

Knows the safetensors container and the `model.safetensors.index.json` convention, nothing about the
model. Every header is read and cross-checked when the checkpoint is opened, so a damaged download is
reported up front with the file and tensor it concerns; tensor data is only mapped, never read, until
the model touches it.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype names -> torch dtypes (only those a gpt-oss checkpoint can hold, plus common ones
# so that a wrong dtype is reported by name rather than as "unknown").
DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}
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


class SafetensorsCheckpoint:
    """All tensors of the `*.safetensors` shards in one directory, by name.

    Uses `model.safetensors.index.json` when present (and checks it against the shard headers),
    otherwise every `*.safetensors` file in the directory.

    Raises:
        CheckpointError: corrupt index or header, missing or truncated shard, index/shard disagreement.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if index_path.exists():
            expected = _read_index(index_path)
            files = sorted(set(expected.values()))
        else:
            expected = None
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.directory}: no {INDEX_NAME} and no *.safetensors files")
        missing = [f for f in files if not (self.directory / f).is_file()]
        if missing:
            held = [name for name, file in expected.items() if file == missing[0]]
            raise CheckpointError(
                f"{index_path}: names shard file(s) that do not exist: "
                + ", ".join(str(self.directory / f) for f in missing)
                + f" ({missing[0]} should hold {len(held)} tensor(s), e.g. {', '.join(held[:3])})")
        self._tensors: dict[str, TensorInfo] = {}
        for file in files:
            for info in _read_header(self.directory / file):
                if info.name in self._tensors:
                    raise CheckpointError(f"tensor {info.name!r} is stored twice: in "
                                          f"{self._tensors[info.name].file} and {info.file}")
                self._tensors[info.name] = info
        if expected is not None:
            _check_index(index_path, expected, self._tensors)
        self._storages: dict[Path, torch.UntypedStorage] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is not in the checkpoint") from None

    def get(self, name: str) -> torch.Tensor:
        """The tensor as a read-only-by-convention view of the memory-mapped file (no copy)."""
        info = self.info(name)
        storage = self._storages.get(info.file)
        if storage is None:
            # shared=False maps the file privately: pages load lazily and writes never reach the disk.
            storage = torch.UntypedStorage.from_file(str(info.file), shared=False,
                                                     nbytes=info.file.stat().st_size)
            self._storages[info.file] = storage
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, info.begin, (info.end - info.begin,))
        dtype = DTYPES[info.dtype]
        if info.begin % dtype.itemsize:
            raw = raw.clone()  # unaligned data offsets cannot be viewed as wider types in place
        return raw.view(dtype).reshape(info.shape)


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
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: unsupported dtype {dtype!r}")
        numel = 1
        for dim in shape:
            numel *= dim
        if end - begin != numel * DTYPES[dtype].itemsize or begin < 0:
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
