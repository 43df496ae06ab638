"""Where the project caches what it builds (tokenizer files, the demo model, repacked GGUF experts):
`$GPTOSS_CACHE_DIR`, else the user cache directory. Torch-free: the command line imports it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("GPTOSS_CACHE_DIR") or platformdirs.user_cache_dir("gptoss-mcp"))


@contextlib.contextmanager
def build_lock(path: Path):
    """One process at a time builds what `path` (a lock file) guards. An OS lock: the kernel drops it
    when its holder dies, so a build killed half-way blocks no later one."""
    import fcntl  # POSIX

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
