"""The built-in demo model: a tiny random checkpoint in the real format, built once and cached."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.cache_dir import build_directory_once, cache_dir
from engine.synthetic import write_model

logger = logging.getLogger(__name__)

DEMO_PRESET, DEMO_SEED = "tiny", 0
_DEMO_NAME = f"demo-{DEMO_PRESET}-seed{DEMO_SEED}-v1"


def demo_model_dir() -> Path:
    """Builds the demo checkpoint on first use (a few seconds) and returns its directory."""
    target = cache_dir() / _DEMO_NAME

    def build(staging: Path) -> None:
        logger.info("building the demo model (random weights, real gpt-oss format) in %s", target)
        write_model(staging, preset=DEMO_PRESET, seed=DEMO_SEED, original=False)

    build_directory_once(target, build, "demo")
    return target
