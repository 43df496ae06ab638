"""Starting `gptoss-mcp serve` as a real subprocess and connecting real SDK clients to it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(model: Path | str, *extra: str) -> list[str]:
    return ["-m", "gptoss_mcp", "serve", "--model", str(model), "--progress-interval", "0.2", *extra]


def server_env(cache_dir: Path) -> dict[str, str]:
    # The stdio client passes a server only a few variables of its own (PATH, HOME, ...), so the
    # session's extension build directory is passed on by name.
    return {"GPTOSS_CACHE_DIR": str(cache_dir), "GPTOSS_EXTENSION_DIR": os.environ["GPTOSS_EXTENSION_DIR"],
            "PYTHONUNBUFFERED": "1"}


def stdio_params(model: Path | str, cache_dir: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=serve_args(model, *extra), env=server_env(cache_dir))


@contextlib.contextmanager
def http_server(model: Path | str, cache_dir: Path, transport: str = "http", *extra: str, wait: bool = True):
    """Runs the server on a free loopback port; yields (process, base URL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *serve_args(model, "--transport", transport, "--port", str(port), *extra)],
        env={**os.environ, **server_env(cache_dir)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        if wait:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode()}")
                try:
                    if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not start")
                time.sleep(0.2)
        yield process, base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def client_for(transport: str, target, mode: str) -> Client:
    """target: StdioServerParameters for stdio, the base URL for http/sse."""
    if transport == "stdio":
        return Client(target, mode=mode)
    if transport == "http":
        return Client(target + "/mcp", mode=mode)
    return Client(sse_client(target + "/sse"), mode=mode)


async def cancel_once_generating(client: Client, arguments: dict, while_generating=None) -> None:
    """Calls `generate` with `arguments`, waits until it has made a token (progress >= 1), runs
    `while_generating()` if given, then abandons the call: the client sends notifications/cancelled."""
    generating = anyio.Event()

    async def on_progress(value, total, message):
        if value >= 1:
            generating.set()

    async with anyio.create_task_group() as tg:
        async def call():
            await client.call_tool("generate", arguments, progress_callback=on_progress)

        tg.start_soon(call)
        await generating.wait()
        if while_generating is not None:
            while_generating()
        tg.cancel_scope.cancel()
