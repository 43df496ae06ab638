"""A GGUF's MXFP4 experts in the engine's layout, repacked once into the cache and memory-mapped.

ggml keeps each block's scale byte beside its nibbles and orders the nibbles differently from the
Hugging Face layout the kernels read (`engine.gguf_checkpoint._repack_mxfp4`). Repacked at every
load, all experts would sit in anonymous memory from the start (gpt-oss-20b: 12 GB), where a
safetensors checkpoint's expert pages are only mapped and come in as experts are used. So the
repacked bytes (the same bits, reordered: nothing is requantized) are written once, a layer per
safetensors file, to `<cache>/gguf-experts/<key>/`, and mapped like shards from then on. The key
hashes the GGUF files' paths, sizes and modification times and the layout version, so a changed
file is repacked again; the directory is built under a lock and renamed into place whole
(`engine.cache_dir.build_directory_once`). Where the cache cannot be written (no space, read-only),
the experts are repacked into memory for this run, with a warning that says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.cache_dir import build_directory_once, cache_dir
from engine.checkpoint import SafetensorsCheckpoint

logger = logging.getLogger(__name__)

_LAYOUT_VERSION = 1


def cache_key(files: list[Path]) -> str:
    identity = [[str(f.resolve()), stat.st_size, stat.st_mtime_ns] for f in files for stat in (f.stat(),)]
    return hashlib.sha256(json.dumps([_LAYOUT_VERSION, identity]).encode()).hexdigest()[:24]


def cached_experts(files: list[Path], layers: int,
                   repack_layer: Callable[[int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every layer's repacked expert tensors (canonical names), as views of mapped cache files.
    `repack_layer(n)` gives layer n's tensors in memory; it is called only when the cache is built."""
    target = cache_dir() / "gguf-experts" / cache_key(files)

    def repack(staging: Path) -> None:
        logger.info("repacking the MXFP4 experts of %s into %s (once; later loads map them)", files[0].name, target)
        for n in range(layers):  # a layer at a time: one layer's experts in memory at most
            save_file(repack_layer(n), str(staging / f"layer-{n:03d}.safetensors"))

    if not target.is_dir():
        try:
            build_directory_once(target, repack, "repack")
        except OSError as e:
            logger.warning("could not cache the repacked experts of %s in %s (%s); they are repacked into "
                           "memory for this run", files[0].name, target.parent, e)
            return {name: tensor for n in range(layers) for name, tensor in repack_layer(n).items()}
        size = sum(f.stat().st_size for f in target.glob("*.safetensors"))
        logger.info("cached %.2f GB of repacked experts in %s (delete it to reclaim the space)", size / 1e9, target)
    checkpoint = SafetensorsCheckpoint(target)
    return {name: checkpoint.get(name) for name in checkpoint.names()}
