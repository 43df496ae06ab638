"""Memory-mapped access to the tensors of a sharded safetensors checkpoint.

Every header is read and cross-checked when the checkpoint is opened (`engine.shard_headers`), so a
damaged download is reported up front with the file and tensor it concerns; tensor data is only
mapped, never read, until the model touches it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.shard_headers import INDEX_NAME, CheckpointError, TensorInfo, read_shard_headers

__all__ = ["DTYPES", "INDEX_NAME", "CheckpointError", "SafetensorsCheckpoint", "TensorInfo", "map_file",
           "mapped_tensor"]

logger = logging.getLogger(__name__)

# safetensors dtype names -> torch dtypes (the names engine.shard_headers accepts).
DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}


class SafetensorsCheckpoint:
    """All tensors of the `*.safetensors` shards in one directory, by name.

    Uses `model.safetensors.index.json` when present (and checks it against the shard headers),
    otherwise every `*.safetensors` file in the directory.

    Raises:
        CheckpointError: corrupt index or header, missing or truncated shard, index/shard disagreement.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._tensors: dict[str, TensorInfo] = read_shard_headers(self.directory)
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
            storage = self._storages[info.file] = map_file(info.file)
        return mapped_tensor(storage, info.begin, info.end - info.begin, DTYPES[info.dtype], info.shape)


def map_file(path: Path) -> torch.UntypedStorage:
    """The whole file, mapped privately: pages load lazily and writes never reach the disk."""
    return torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)


def mapped_tensor(storage: torch.UntypedStorage, begin: int, nbytes: int, dtype: torch.dtype,
                  shape: tuple[int, ...]) -> torch.Tensor:
    """The bytes [begin, begin + nbytes) of a mapped file as a tensor (a view, no copy, when aligned)."""
    raw = torch.empty(0, dtype=torch.uint8).set_(storage, begin, (nbytes,))
    if begin % dtype.itemsize:
        raw = raw.clone()  # unaligned data offsets cannot be viewed as wider types in place
    return raw.view(dtype).reshape(shape)
