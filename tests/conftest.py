"""Shared fixtures: random checkpoints in the real gpt-oss format, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.synthetic import write_model

# (preset, seed): three shapes, three seeds; every test sequence is longer than their windows (8, 7, 16).
CHECKPOINTS = {"tiny": ("tiny", 0), "tiny-odd": ("tiny-odd", 1), "small": ("small", 2)}


@pytest.fixture(scope="session", autouse=True)
def _caches_of_this_session(tmp_path_factory):
    """The C++ extension is built from scratch, and the tokenizer and harmony caches are filled, in
    directories of this session's: the build is part of what is tested, and a user's cache stays
    untouched. GPTOSS_EXTENSION_DIR or GPTOSS_CACHE_DIR, when set, is used instead. Subprocesses
    inherit the variables."""
    with pytest.MonkeyPatch.context() as mp:
        for variable, name in (("GPTOSS_EXTENSION_DIR", "extension"), ("GPTOSS_CACHE_DIR", "cache")):
            if not os.environ.get(variable):
                mp.setenv(variable, str(tmp_path_factory.mktemp(name)))
        yield


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    # Build the C++ extension once, up front, so that server subprocesses find it cached instead of
    # each compiling it while a test waits (whether it built is asserted by the extension tests).
    from engine.ops import extension

    extension.load()
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, (preset, seed) in CHECKPOINTS.items():
        write_model(root / name, preset=preset, seed=seed)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="session")
def tiny_dir(model_dirs) -> Path:
    return model_dirs["tiny"]
