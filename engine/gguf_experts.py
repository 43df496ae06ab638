"""A GGUF's MXFP4 experts in the engine's layout, repacked once into the cache and memory-mapped.

ggml keeps each block's scale byte beside its nibbles and orders the nibbles differently from the
Hugging Face layout the kernels read (`engine.gguf_checkpoint._repack_mxfp4`). Repacked at every
load, all experts would sit in anonymous memory from the start (gpt-oss-20b: 12 GB), where a
safetensors checkpoint's expert pages are only mapped and come in as experts are used. So the
repacked bytes (the same bits, reordered: nothing is requantized) are written once, a layer per
safetensors file, to `<cache>/gguf-experts/<key>/`, and mapped like shards from then on. The key
hashes the GGUF files' paths, sizes and modification times and the layout version, so a changed
file is repacked again. Where the cache cannot be written (no space, read-only), the experts are
repacked into memory for this run, with a warning that says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.cache_dir import build_lock, cache_dir
from engine.checkpoint import SafetensorsCheckpoint

logger = logging.getLogger(__name__)

_LAYOUT_VERSION = 1
_STAGING_PREFIX = ".staging-"


def cache_key(files: list[Path]) -> str:
    identity = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return hashlib.sha256(json.dumps([_LAYOUT_VERSION, identity]).encode()).hexdigest()[:24]


def cached_experts(files: list[Path], layers: int,
                   repack_layer: Callable[[int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every layer's repacked expert tensors (canonical names), as views of mapped cache files.
    `repack_layer(n)` gives layer n's tensors in memory; it is called only when the cache is built."""
    root = cache_dir() / "gguf-experts"
    target = root / cache_key(files)
    if not (target / "complete").is_file():
        try:
            with build_lock(root / ".lock"):
                if not (target / "complete").is_file():  # not built by another process meanwhile
                    _build(target, root, layers, repack_layer, files[0])
        except OSError as e:
            logger.warning("could not cache the repacked experts of %s in %s (%s); they are repacked into "
                           "memory for this run", files[0].name, root, e)
            return {name: tensor for n in range(layers) for name, tensor in repack_layer(n).items()}
    checkpoint = SafetensorsCheckpoint(target)
    return {name: checkpoint.get(name) for name in checkpoint.names()}


def _build(target: Path, root: Path, layers: int, repack_layer: Callable[[int], dict[str, torch.Tensor]],
           first_file: Path) -> None:
    for stale in root.glob(_STAGING_PREFIX + "*"):  # holding the lock: left by a build that was killed
        logger.info("removing %s, left by an interrupted repack", stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=_STAGING_PREFIX))
    logger.info("repacking the MXFP4 experts of %s into %s (once; later loads map them)", first_file.name, target)
    try:
        for n in range(layers):  # a layer at a time: one layer's experts in memory at most
            save_file(repack_layer(n), str(staging / f"layer-{n:03d}.safetensors"))
        (staging / "complete").write_text(f"{first_file}\n")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete directory of an older build, if any
        os.rename(staging, target)  # atomic: the directory appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.glob("*.safetensors"))
    logger.info("cached %.2f GB of repacked experts in %s (delete it to reclaim the space)", size / 1e9, target)
