"""Where the project caches what it builds (tokenizer files, the demo model):
`$GPTOSS_CACHE_DIR`, else the user cache directory; and how a cached directory is built once."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("GPTOSS_CACHE_DIR") or platformdirs.user_cache_dir("gptoss-mcp"))


def build_directory_once(target: Path, build: Callable[[Path], None], kind: str) -> None:
    """Makes `target` by `build(staging)` unless it exists. One process at a time builds (the lock
    `.<kind>.lock` beside it); the staging directory (`.<kind>-*` beside it) is renamed into place
    when complete, so the directory appears whole or not at all. Staging directories that a killed
    build left are removed first."""
    if target.is_dir():
        return
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{kind}.lock", f"waiting for another process that is building {target}"):
        if target.is_dir():  # another process built it while we waited
            return
        for stale in root.glob(f".{kind}-*"):  # holding the lock: no build of ours is running
            logger.info("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-"))
        try:
            build(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None = None):
    """Holds an exclusive OS lock on the file `path` (created if missing); logs `waiting` when another
    process holds it first. The kernel drops the lock when its holder dies, so a build killed half-way
    (Ctrl-C at first start, a host killing the server) blocks nobody."""
    import fcntl  # POSIX

    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logger.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
