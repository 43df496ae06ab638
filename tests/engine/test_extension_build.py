"""The extension's build directory shared by processes, with real builds in real subprocesses: a build
killed half-way does not block the next start, two processes starting together build once, and a
finished build is loaded without compiling anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from engine.ops import extension
print(extension.load())
"""
BUILDING = "engine.ops.extension: building the C++ ops extension"  # the log line of a build


def _start(root: Path) -> subprocess.Popen:
    # Its own process group, so that killing it kills the ninja and compiler processes under it too.
    return subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "GPTOSS_EXTENSION_DIR": str(root)},
                            start_new_session=True)


def _finish(process: subprocess.Popen) -> str:
    """The process's log, once it has loaded the extension."""
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0 and stdout.strip() == "True", stderr
    return stderr


def _wait_for(path_glob, root: Path, seconds: float) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {path_glob} under {root} after {seconds}s")


def test_an_interrupted_build_is_rebuilt_once_and_a_finished_one_loads_as_it_is(tmp_path):
    root = tmp_path / "ext"
    # A first start killed while the compiler runs leaves cpp_extension's lock file behind.
    first = _start(root)
    lock = _wait_for("ext-*/lock", root, seconds=120)
    _wait_for("ext-*/build.ninja", root, seconds=60)
    time.sleep(3)  # into the compile
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    build_dir = lock.parent
    assert lock.exists() and not (build_dir / "finished").exists()

    # Two starts at once: one rebuilds (saying it removed the stale lock), the other waits and loads.
    starts = [_start(root), _start(root)]
    logs = [_finish(process) for process in starts]
    builders = [log for log in logs if BUILDING in log]
    assert len(builders) == 1, logs
    assert "left by a build of the C++ ops extension that was interrupted" in builders[0]
    waiter = logs[1 - logs.index(builders[0])]
    assert "waiting for another process" in waiter, waiter
    assert (build_dir / "finished").exists() and not lock.exists()

    # A finished build loads without ninja: with its build files gone, nothing is compiled again.
    for leftover in [build_dir / "build.ninja", *build_dir.glob("*.o")]:
        leftover.unlink()
    log = _finish(_start(root))
    assert BUILDING not in log, log
    assert not (build_dir / "build.ninja").exists() and not list(build_dir.glob("*.o"))
