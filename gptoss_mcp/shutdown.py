"""Ending `serve` promptly: on stdin EOF, SIGTERM or SIGINT, whatever the engine thread is doing.

The engine thread may be importing torch, compiling the C++ extension, loading shards or inside a
forward pass; none of that can be interrupted, and waiting for it (as interpreter exit would, for
the thread) holds a host's shutdown for seconds. So the process ends with `os._exit` once its own
state is safe: logs flushed, and child processes (the extension build's ninja, which stops its
compilers) told to stop so that none outlives the server. Everything the engine writes to disk is
made to survive this: the extension build lock is an OS lock, the demo model is built aside and
renamed into place.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger(__name__)


def end_process(code: int) -> NoReturn:
    for pid in _child_processes():
        try:
            os.kill(pid, signal.SIGTERM)
            logger.info("stopped child process %d", pid)
        except OSError:
            pass  # already gone
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def end_on_signals() -> None:
    """SIGTERM and SIGINT end the process at once (exit code 0: a requested shutdown). Uvicorn
    replaces these handlers while it serves and raises the signal again once it has shut down."""

    def handle(signum: int, _frame) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        end_process(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def _child_processes() -> list[int]:
    """Direct children of this process, from each thread's /proc children list (Linux; elsewhere none
    are found). One small read per thread: every read waits for the GIL, which the engine thread may
    hold in turns of 5 ms, so scanning all of /proc here could take seconds."""
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return []
    children = []
    for tid in threads:
        try:
            children += [int(pid) for pid in Path(f"/proc/self/task/{tid}/children").read_text().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return children
