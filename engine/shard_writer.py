"""Streams named tensors into sharded safetensors files plus `model.safetensors.index.json`.

The shard plan is fixed up front from the tensor shapes, so each tensor is written as soon as it is
produced and a 13 GB checkpoint never has to sit in memory at once (the `safetensors` library's
`save_file` needs every tensor of a file in memory together).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from engine.checkpoint import DTYPES, INDEX_NAME

_NAMES_BY_DTYPE = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for dim in self.shape:
            n *= dim
        return n


class ShardedWriter:
    """Writes tensors, in the planned order, into shards of at most `max_shard_bytes` (a larger
    tensor gets a shard of its own).

    Args:
        directory: output directory (created).
        tensors: every tensor to write, in write order.
        shard_name: (shard index, shard count) -> file name.
        max_shard_bytes: size budget per shard.
        write_index: also write `model.safetensors.index.json`.
    """

    def __init__(self, directory: Path, tensors: list[PlannedTensor], shard_name: Callable[[int, int], str],
                 max_shard_bytes: int, write_index: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for tensor in tensors:
            if self._shards[-1] and size + tensor.nbytes > max_shard_bytes:
                self._shards.append([])
                size = 0
            self._shards[-1].append(tensor)
            size += tensor.nbytes
        count = len(self._shards)
        self._files = [shard_name(i, count) for i in range(count)]
        self._write_index = write_index
        self._queue = [(i, t) for i, shard in enumerate(self._shards) for t in shard]
        self._next = 0
        self._open: BinaryIO | None = None
        self._open_shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, planned = self._queue[self._next]
        if name != planned.name:
            raise ValueError(f"expected tensor {planned.name!r} next, got {name!r}")
        if tuple(tensor.shape) != planned.shape or _NAMES_BY_DTYPE[tensor.dtype] != planned.dtype:
            raise ValueError(f"tensor {name!r}: planned {planned.dtype} {list(planned.shape)}, got "
                             f"{tensor.dtype} {list(tensor.shape)}")
        if shard != self._open_shard:
            self._start_shard(shard)
        self._open.write(memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()))
        self._next += 1
        if self._next == len(self._queue) or self._queue[self._next][0] != shard:
            self._open.close()
            self._open = None

    def close(self) -> list[str]:
        """Finishes the files; returns the shard file names."""
        if self._next != len(self._queue):
            raise ValueError(f"{len(self._queue) - self._next} planned tensor(s) were never written, "
                             f"starting with {self._queue[self._next][1].name!r}")
        if self._write_index:
            index = {
                "metadata": {"total_size": sum(t.nbytes for shard in self._shards for t in shard)},
                "weight_map": {t.name: self._files[i] for i, t in self._queue},
            }
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return list(self._files)

    def _start_shard(self, shard: int) -> None:
        header, offset = {}, 0
        for t in self._shards[shard]:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        header["__metadata__"] = {"format": "pt"}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned
        self._open = open(self.directory / self._files[shard], "wb")
        self._open.write(struct.pack("<Q", len(encoded)) + encoded)
        self._open_shard = shard
