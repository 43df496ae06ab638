"""The built-in demo model: a tiny random checkpoint in the real format, built once and cached."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

from engine.synthetic import write_model

logger = logging.getLogger(__name__)

DEMO_PRESET, DEMO_SEED = "tiny", 0
_DEMO_NAME = f"demo-{DEMO_PRESET}-seed{DEMO_SEED}-v1"


def demo_model_dir() -> Path:
    """Builds the demo checkpoint on first use (a few seconds) and returns its directory."""
    root = Path(os.environ.get("GPTOSS_CACHE_DIR") or platformdirs.user_cache_dir("gptoss-mcp"))
    target = root / _DEMO_NAME
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    logger.info("building the demo model (random weights, real gpt-oss format) in %s", target)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".demo-"))
    try:
        write_model(staging, preset=DEMO_PRESET, seed=DEMO_SEED, original=False)
        try:
            staging.rename(target)  # atomic: another process may have won the race, which is fine
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
