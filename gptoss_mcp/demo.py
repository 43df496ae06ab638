"""The built-in demo model: the trained weights the package carries in compact form
(`engine/demo/gptoss-demo.safetensors`), expanded once into a real gpt-oss checkpoint under the cache
directory. The cache key is a hash of the compact file, so a new demo version gets a new directory."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from engine.cache_dir import build_directory_once, cache_dir
from engine.demo.packaged import PACKAGED, README

logger = logging.getLogger(__name__)


def demo_version() -> str:
    """The first 12 hex digits of the compact file's SHA-256."""
    return hashlib.sha256(PACKAGED.read_bytes()).hexdigest()[:12]


def demo_model_dir() -> Path:
    """Expands the demo checkpoint on first use (a few seconds) and returns its directory."""
    target = cache_dir() / f"demo-{demo_version()}"

    def build(staging: Path) -> None:
        from engine.demo.package import expand  # torch: only when the demo is built

        logger.info("building the demo model (expanding %s into a gpt-oss checkpoint) in %s", PACKAGED.name, target)
        expand(PACKAGED, staging, README)

    build_directory_once(target, build, "demo")
    return target


def model_to_load(model: str) -> str | Path:
    """--model as Engine.load takes it: "demo" becomes the demo checkpoint's directory (expanded on
    first use); a directory, Hugging Face id or GGUF file is passed on as given."""
    return demo_model_dir() if model == "demo" else model
