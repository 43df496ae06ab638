"""`--model ORG/NAME[@REVISION]`: resolving Hugging Face ids in the local cache, never over the network.

The cache is laid out by hand exactly as huggingface_hub lays it out (`models--ORG--NAME/refs/<ref>`
holding a commit hash, `snapshots/<commit>/<file>` relative symlinks into `blobs/<sha256>`), with the
session's tiny checkpoint in it (blobs are hard links: nothing here writes to them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_source import LAYOUTS, resolve_model
from engine.shard_headers import INDEX_NAME, CheckpointError

REPO = "acme/tiny-gpt"
COMMIT = "a" * 40
SECOND_COMMIT = "b" * 40
HF_FILES = ["config.json", "generation_config.json", INDEX_NAME, "model-00000-of-00002.safetensors",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"]


def lay_into_cache(hub: Path, repo_id: str, commit: str, source: Path, files: list[str],
                   refs: tuple[str, ...] = ("main",)) -> Path:
    """Puts `files` of `source` into the hub cache `hub` at `commit` the way huggingface_hub does;
    returns the snapshot directory."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name in files:
        blob = repo / "blobs" / hashlib.sha256((source / name).read_bytes()).hexdigest()
        if not blob.exists():
            os.link(source / name, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture
def hub(tmp_path) -> Path:
    return tmp_path / "hf" / "hub"  # HF_HOME/hub: huggingface_hub's default cache under HF_HOME


@pytest.fixture
def snapshot(hub, tiny_dir) -> Path:
    return lay_into_cache(hub, REPO, COMMIT, tiny_dir, HF_FILES)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt of this process to open a connection fails the test (even one whose error the library
    would swallow)."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"network access to {address} while resolving from the cache")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert attempts == []


def test_an_id_resolves_to_its_cached_snapshot(hub, snapshot, caplog):
    with caplog.at_level(logging.INFO, logger="engine.model_source"):
        source = resolve_model(REPO, cache_dir=hub)
    assert (source.kind, source.id, source.revision, source.commit) == ("hf", REPO, None, COMMIT)
    assert source.path == snapshot
    assert sorted(source.files) == sorted(set(HF_FILES) - {"generation_config.json", "tokenizer_config.json",
                                                            "special_tokens_map.json"})
    assert f"{snapshot} ({len(source.files)} files)" in caplog.text


def test_a_revision_is_a_branch_or_a_commit(hub, tiny_dir, snapshot):
    second = lay_into_cache(hub, REPO, SECOND_COMMIT, tiny_dir, HF_FILES, refs=("v2",))
    by_branch = resolve_model(f"{REPO}@v2", cache_dir=hub)
    assert (by_branch.revision, by_branch.commit, by_branch.path) == ("v2", SECOND_COMMIT, second)
    by_commit = resolve_model(f"{REPO}@{COMMIT}", cache_dir=hub)
    assert (by_commit.commit, by_commit.path) == (COMMIT, snapshot)
    assert resolve_model(REPO, cache_dir=hub).commit == COMMIT  # main still points at the first


@pytest.mark.parametrize("spec, command", [
    ("acme/absent", "gptoss-mcp pull acme/absent"),
    (f"{REPO}@v9", f"gptoss-mcp pull {REPO} --revision v9"),
    (f"{REPO}@{'c' * 40}", f"gptoss-mcp pull {REPO} --revision {'c' * 40}"),
])
def test_a_model_missing_from_the_cache_names_the_pull_command(hub, snapshot, spec, command):
    with pytest.raises(CheckpointError) as info:
        resolve_model(spec, cache_dir=hub)
    assert spec in str(info.value) and str(hub) in str(info.value) and f"`{command}`" in str(info.value)


def test_an_incomplete_snapshot_names_the_missing_file(hub, snapshot):
    (snapshot / "model-00001-of-00002.safetensors").unlink()  # the link, not the blob
    with pytest.raises(CheckpointError) as info:
        resolve_model(REPO, cache_dir=hub)
    message = str(info.value)
    assert f"{snapshot}: no model-00001-of-00002.safetensors" in message and "original" not in message
    assert f"`gptoss-mcp pull {REPO}`" in message


def test_a_snapshot_of_the_original_layout_loads_its_original_directory(hub, tiny_dir):
    files = sorted(str(p.relative_to(tiny_dir)) for p in (tiny_dir / "original").iterdir()) + ["tokenizer.json"]
    snapshot = lay_into_cache(hub, REPO, COMMIT, tiny_dir, files)
    source = resolve_model(REPO, cache_dir=hub)
    assert source.path == snapshot / "original"
    assert "original/config.json" in source.files and "tokenizer.json" in source.files


def test_a_local_directory_of_the_same_name_wins(hub, snapshot, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / REPO).mkdir(parents=True)
    shutil.copy(snapshot / "config.json", tmp_path / REPO / "config.json")
    with caplog.at_level(logging.WARNING, logger="engine.model_source"):
        source = resolve_model(REPO, cache_dir=hub)
    assert (source.kind, source.path, source.files) == ("path", Path(REPO), ["config.json"])
    assert REPO in caplog.text and str(tmp_path / REPO) in caplog.text and "Hugging Face id" in caplog.text


def test_a_path_that_is_neither_a_directory_nor_an_id_is_not_found(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a valid Hugging Face id"):
        resolve_model("acme/two--dashes")  # the Hub's own rules reject it


def test_layouts_select_only_what_the_engine_loads():
    from huggingface_hub.utils import filter_repo_objects

    repo = HF_FILES + ["README.md", ".gitattributes", "original/config.json", "original/dtypes.json",
                       "original/model.safetensors", "metal/model.bin"]
    selected = {name: sorted(filter_repo_objects(repo, allow_patterns=list(layout.allow),
                                                 ignore_patterns=list(layout.ignore) or None))
                for name, layout in LAYOUTS.items()}
    assert selected["hf"] == sorted(HF_FILES)
    assert selected["original"] == sorted(["original/config.json", "original/dtypes.json", "original/model.safetensors",
                                           "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])


def test_resolving_and_pulling_do_not_import_torch():
    code = "import sys, engine.model_source, gptoss_mcp.pull; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptoss_mcp", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def test_generate_loads_a_cached_model_by_id_offline(hub, snapshot):
    # HF_HOME as a user sets it; HF_ENDPOINT points nowhere, so any request would fail the command.
    env = {"HF_HOME": str(hub.parent), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_cli("generate", "--model", REPO, "--max-tokens", "2", "--temperature", "0", "Hi", env=env)
    assert result.returncode == 0, result.stderr
    assert f"{REPO}: Hugging Face snapshot {snapshot}" in result.stderr
    missing = run_cli("generate", "--model", "acme/absent", "Hi", env=env)
    assert missing.returncode == 3 and "`gptoss-mcp pull acme/absent`" in missing.stderr
