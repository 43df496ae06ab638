"""A machine that cannot build the C++ ops still runs: reference ops, one warning."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from engine import Engine
engine = Engine.load(sys.argv[1], dtype="float32")
engine.logits([1, 2, 3])
Engine.load(sys.argv[1], dtype="float32")
print(engine.ops_backend, engine.cpu_kernels)
"""


def _run(tiny_dir, tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GPTOSS_EXTENSION_DIR": str(tmp_path / "no-build"), "CXX": "/nonexistent/c++",
                   **env}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dir)], capture_output=True, text=True,
                          timeout=300, env=environment)


def test_failed_build_falls_back_to_reference_with_one_warning(tiny_dir, tmp_path):
    result = _run(tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference None"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "extension unavailable" in warnings[0], result.stderr


def test_forcing_the_extension_when_it_cannot_build_is_an_error(tiny_dir, tmp_path):
    result = _run(tiny_dir, tmp_path, GPTOSS_OPS="extension")
    assert result.returncode != 0 and "could not be built or loaded" in result.stderr
