"""`gptoss-mcp pull`, run as a real subprocess against a local stand-in for the Hugging Face Hub.

`FakeHub` answers the endpoints huggingface_hub's `snapshot_download` calls (read from
huggingface_hub 2.4's `_snapshot_download.py`, `hf_api.py` and `file_download.py`): the model info at a
revision, the recursive tree listing, and HEAD / GET (with Range) of `/{repo}/resolve/{revision}/{file}`.
It serves the session's tiny checkpoint (Hugging Face layout, `original/`, and a `metal/` file) and
records every request, so a test sees exactly what was fetched. `HF_ENDPOINT` points at it and
`HF_HOME` at a temporary directory: nothing reaches the internet or the user's cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from engine.model_source import resolve_model

REPO = "acme/tiny-gpt"
COMMIT = "c0ffee" + "0" * 34
SHARD = "model-00002-of-00002.safetensors"  # a large shard (the unembedding)


@dataclass
class FakeHub:
    """One repository at one commit (also reachable as "main"), with switches for the failures tested."""

    files: dict[str, bytes]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, file or API path, Range)
    cut_first_get: dict[str, int] = field(default_factory=dict)  # file -> bytes sent before dropping the connection
    failing: set[str] = field(default_factory=set)                # files whose GET answers 500

    def fetched(self) -> list[str]:
        """The files whose content was requested (GET of /resolve/), in order."""
        return [path for method, path, _ in self.requests if method == "GET" and not path.startswith("/api/")]


@contextlib.contextmanager
def serving(hub: FakeHub) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the test reads hub.requests instead
            pass

        def do_HEAD(self) -> None:
            self.answer(head=True)

        def do_GET(self) -> None:
            self.answer(head=False)

        def answer(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            if m := re.fullmatch(r"/api/models/(\w+/[\w-]+)/(revision|tree)/([^/]+)", path):
                hub.requests.append((self.command, path, None))
                repo, what, revision = m.groups()
                if repo != REPO:
                    return self.error(404, "RepoNotFound")
                if revision not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                if what == "revision":
                    return self.json({"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": f} for f in hub.files]})
                return self.json([{"type": "file", "path": f, "size": len(data),
                                   "oid": hashlib.sha1(data).hexdigest()} for f, data in hub.files.items()])
            m = re.fullmatch(r"/(\w+/[\w-]+)/resolve/([^/]+)/(.+)", path)
            if not m or m[1] != REPO or m[2] not in ("main", COMMIT) or m[3] not in hub.files:
                return self.error(404, "EntryNotFound")
            name, data = m[3], hub.files[m[3]]
            rng = self.headers.get("Range")
            hub.requests.append((self.command, name, rng))
            if not head and name in hub.failing:
                return self.error(500, "ServerError")
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and not head else 0
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            cut = hub.cut_first_get.pop(name, None)
            if cut is not None:  # promised the whole file, sends a part, hangs up
                self.wfile.write(data[start:start + cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def json(self, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status: int, code: str) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def repo_files(tiny_dir) -> dict[str, bytes]:
    """The repository as the Hub would list it: both layouts, a metal/ file and a README."""
    files = {str(p.relative_to(tiny_dir)): p.read_bytes() for p in sorted(tiny_dir.rglob("*")) if p.is_file()}
    files["metal/model.bin"] = b"\0" * 1024
    return files


@pytest.fixture
def hub(repo_files) -> FakeHub:
    return FakeHub(dict(repo_files))


@pytest.fixture
def pull(hub, tmp_path):
    """Runs `gptoss-mcp pull ARGS` against the fake hub, into tmp_path/hf."""
    with serving(hub) as url:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("HF_") and key.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=url, HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1")

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "gptoss_mcp", "pull", *args], capture_output=True,
                                  text=True, timeout=300, env=env)

        yield run


def files_under(snapshot: Path) -> set[str]:
    return {str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()}


def test_pull_fetches_only_the_files_of_the_hf_layout(pull, hub, tmp_path):
    result = pull(REPO)
    assert result.returncode == 0, result.stderr
    snapshot = Path(result.stdout.strip())  # the one line on stdout
    assert snapshot == tmp_path / "hf" / "hub" / "models--acme--tiny-gpt" / "snapshots" / COMMIT
    expected = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "model-00000-of-00002.safetensors",
                "model-00001-of-00002.safetensors", SHARD}
    assert files_under(snapshot) == expected
    assert sorted(hub.fetched()) == sorted(expected)  # nothing of original/, metal/ or the README was requested
    assert resolve_model(REPO, cache_dir=tmp_path / "hf" / "hub").path == snapshot
    assert "checked" in result.stderr and "tensors" in result.stderr


def test_pull_of_the_original_layout(pull, hub, tmp_path):
    result = pull(REPO, "--layout", "original", "--revision", COMMIT)
    assert result.returncode == 0, result.stderr
    directory = Path(result.stdout.strip())  # what --model loads: the snapshot's original/
    assert directory == tmp_path / "hf" / "hub" / "models--acme--tiny-gpt" / "snapshots" / COMMIT / "original"
    files = files_under(directory.parent)
    assert {f for f in files if "/" not in f} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert {f for f in files if "/" in f} == {f for f in hub.files if f.startswith("original/")}
    assert resolve_model(f"{REPO}@{COMMIT}", cache_dir=tmp_path / "hf" / "hub").path == directory


def test_a_cut_transfer_resumes_where_it_stopped(pull, hub):
    half = len(hub.files[SHARD]) // 2
    hub.cut_first_get[SHARD] = half
    result = pull(REPO)
    assert result.returncode == 0, result.stderr
    first, retry = [rng for method, name, rng in hub.requests if method == "GET" and name == SHARD]
    # The second request asks for the rest only (from the last whole chunk written: at most the half sent).
    assert first is None and 0 < int(re.fullmatch(r"bytes=(\d+)-", retry)[1]) <= half
    assert (Path(result.stdout.strip()) / SHARD).read_bytes() == hub.files[SHARD]
    hub.requests.clear()
    again = pull(REPO)  # everything is cached: nothing is downloaded again
    assert again.returncode == 0 and again.stdout == result.stdout and hub.fetched() == []


def test_a_failed_run_keeps_its_finished_files_and_the_next_run_fetches_the_rest(pull, hub):
    hub.failing.add(SHARD)
    failed = pull(REPO)
    assert failed.returncode == 3 and "running the same command again resumes" in failed.stderr
    hub.failing.clear()
    hub.requests.clear()
    result = pull(REPO)
    assert result.returncode == 0, result.stderr
    assert hub.fetched() == [SHARD]


@pytest.mark.parametrize("damage", ["truncated", "tensor missing"])
def test_a_shard_that_does_not_match_the_index_is_reported(pull, hub, damage):
    if damage == "truncated":
        hub.files[SHARD] = hub.files[SHARD][:-100]  # the Hub itself serves the short file
        expected = [SHARD, "truncated", "'lm_head.weight'", "needs bytes up to"]
    else:  # the index names a tensor its shard does not hold
        index = json.loads(hub.files["model.safetensors.index.json"])
        index["weight_map"]["model.layers.0.mlp.extra"] = SHARD
        hub.files["model.safetensors.index.json"] = json.dumps(index).encode()
        expected = [SHARD, "'model.layers.0.mlp.extra'", "does not contain it"]
    result = pull(REPO)
    assert result.returncode == 3, result.stderr
    for part in expected:
        assert part in result.stderr, part
    assert result.stdout == ""


def test_pull_of_an_unknown_repository_or_revision_fails_clearly(pull):
    unknown = pull("acme/absent")
    assert unknown.returncode == 3 and "Repository Not Found" in unknown.stderr and "acme/absent" in unknown.stderr
    revision = pull(REPO, "--revision", "v9")
    assert revision.returncode == 3 and "Revision Not Found" in revision.stderr and "v9" in revision.stderr
    assert "resumes" not in unknown.stderr + revision.stderr  # running it again would not help
    invalid = pull("acme/two--dashes")
    assert invalid.returncode == 2 and "acme/two--dashes" in invalid.stderr
