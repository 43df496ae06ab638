"""Prompt exit: closing stdin (or SIGTERM) ends `serve` within a second in every state (building the
demo model, compiling the extension, loading, decoding), with no traceback, and the next start works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from gptoss_mcp.demo import demo_version
from tests.gptoss_mcp.server_process import http_server, serve_args, server_env, stdio_params

EXIT_SECONDS = 1.0


class RawStdioServer:
    """`gptoss-mcp serve` over stdio, driven line by line; stderr is collected as it comes."""

    def __init__(self, model, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, *serve_args(model)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "raw", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def request(self, method: str, params: dict, until=None) -> dict:
        """Sends a request and reads messages until its reply, or until `until(message)` is true."""
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        while True:
            line = self.process.stdout.readline()
            assert line, "".join(self.stderr)
            message = json.loads(line)
            if message.get("id") == self._next_id or (until and until(message)):
                return message

    def status(self) -> dict:
        reply = self.request("resources/read", {"uri": "gptoss://status"})
        return json.loads(reply["result"]["contents"][0]["text"])

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            assert time.monotonic() < deadline and self.process.poll() is None, "".join(self.stderr)
            time.sleep(0.02)

    def stop(self, how: str) -> float:
        """Closes stdin ("eof") or sends SIGTERM; returns the seconds until the process had exited."""
        started = time.monotonic()
        if how == "eof":
            self.process.stdin.close()
        else:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        elapsed = time.monotonic() - started
        self._reader.join(timeout=5)
        assert code == 0, "".join(self.stderr)
        assert not any("Traceback" in line for line in self.stderr), "".join(self.stderr)
        return elapsed


def _generate_works(model, cache_dir: Path) -> None:
    async def main():
        async with Client(stdio_params(model, cache_dir)) as client:
            result = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 2})
            assert not result.is_error and result.structured_content["usage"]["completion_tokens"] == 2

    anyio.run(main)


def test_eof_while_the_demo_model_is_built(tmp_path):
    cache = tmp_path / "cache"
    server = RawStdioServer("demo", {**server_env(cache), "PATH": "/usr/bin:/bin"})
    server.wait_for_log("building the demo model")
    assert server.stop("eof") <= EXIT_SECONDS
    assert list(cache.glob(".demo-*"))  # the build was abandoned half-way
    _generate_works("demo", cache)  # the next start builds it again, and clears what was left
    assert not list(cache.glob(".demo-*")) and (cache / f"demo-{demo_version()}" / "config.json").is_file()


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_exit_while_the_model_loads(tiny_dir, tmp_path, how):
    server = RawStdioServer(tiny_dir, {**server_env(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 60
    while (status := server.status())["load_progress"] == 0:  # the engine thread has not begun yet
        assert status["state"] == "loading" and time.monotonic() < deadline, status
        time.sleep(0.02)
    assert status["state"] == "loading", status  # stopped while loading, not after
    assert server.stop(how) <= EXIT_SECONDS
    _generate_works(tiny_dir, tmp_path / "cache")


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_exit_while_decoding(tiny_dir, tmp_path, how):
    server = RawStdioServer(tiny_dir, {**server_env(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    decoding = server.request(
        "tools/call", {"name": "generate", "arguments": {"prompt": "Tell a long story", "max_tokens": 4000},
                       "_meta": {"progressToken": 1}},
        until=lambda m: m.get("method") == "notifications/progress" and m["params"]["progress"] >= 5)
    assert decoding.get("method") == "notifications/progress", decoding  # not the finished result
    assert server.stop(how) <= EXIT_SECONDS
    _generate_works(tiny_dir, tmp_path / "cache")


def test_sigterm_ends_an_http_server_with_a_generation_streaming(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http") as (process, base):
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "generate"}
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": 1}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "generate", "arguments": {"prompt": "Go on", "max_tokens": 4000}, "_meta": meta}}
        with httpx2.stream("POST", base + "/mcp", json=body, headers=headers, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("params", {}).get("progress", 0) >= 5:
                    break  # decoding
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            elapsed = time.monotonic() - started
        stderr = process.stderr.read().decode()
    assert code == 0 and elapsed <= EXIT_SECONDS, stderr
    assert "Traceback" not in stderr and "SIGTERM: shutting down" in stderr


def test_eof_abandons_an_extension_build_and_leaves_no_compiler_behind(tiny_dir, tmp_path):
    build_root = tmp_path / "extension"
    env = {**os.environ, **server_env(tmp_path / "cache"), "GPTOSS_EXTENSION_DIR": str(build_root)}
    server = RawStdioServer(tiny_dir, env)
    server.wait_for_log("building the C++ ops extension")
    deadline = time.monotonic() + 30
    while not _processes_mentioning(build_root):  # ninja and its compilers have started
        assert time.monotonic() < deadline, "".join(server.stderr)
        time.sleep(0.05)
    assert server.stop("eof") <= EXIT_SECONDS
    deadline = time.monotonic() + 5
    while left := _processes_mentioning(build_root):
        assert time.monotonic() < deadline, f"still running after the server exited: {left}"
        time.sleep(0.1)
    # The next start rebuilds past the lock this one left: tests/engine/test_extension_build.py.


def _processes_mentioning(path: Path) -> list[str]:
    """Processes working in path (ninja and the compilers run in the build directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = os.readlink(entry / "cwd")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(path)):
            found.append(f"{entry.name}: {command[:120]}")
    return found
