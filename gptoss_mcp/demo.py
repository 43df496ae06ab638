"""The built-in demo model: a tiny random checkpoint in the real format, built once and cached."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from engine.cache_dir import build_lock, cache_dir
from engine.synthetic import write_model

logger = logging.getLogger(__name__)

DEMO_PRESET, DEMO_SEED = "tiny", 0
_DEMO_NAME = f"demo-{DEMO_PRESET}-seed{DEMO_SEED}-v1"
_STAGING_PREFIX = ".demo-"


def demo_model_dir() -> Path:
    """Builds the demo checkpoint on first use (a few seconds) and returns its directory."""
    root = cache_dir()
    target = root / _DEMO_NAME
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root / ".demo.lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        # Holding the lock, any staging directory left is from a build that was killed half-way.
        for stale in root.glob(_STAGING_PREFIX + "*"):
            logger.info("removing %s, left by an interrupted build of the demo model", stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=_STAGING_PREFIX))
        logger.info("building the demo model (random weights, real gpt-oss format) in %s", target)
        try:
            write_model(staging, preset=DEMO_PRESET, seed=DEMO_SEED, original=False)
            staging.rename(target)  # atomic: the directory appears whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
