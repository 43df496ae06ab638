"""HTTP hardening against real servers: Origin/Host checks, bearer-token auth, loopback-only default."""

from __future__ import annotations

import subprocess
import sys

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.gptoss_mcp.server_process import http_server, serve_args

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl-like", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _post(base: str, **headers: str) -> httpx2.Response:
    return httpx2.post(base + "/mcp", json=INITIALIZE, headers={**HEADERS, **headers}, timeout=10)


def test_origin_and_host_validation(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http", "--allow-origin", "https://app.example") as (_, base):
        assert _post(base).status_code == 200
        assert _post(base, Origin="http://localhost:3000").status_code == 200
        assert _post(base, Origin="https://app.example").status_code == 200
        assert _post(base, Origin="http://evil.example").status_code == 403
        assert _post(base, Host="evil.example:8000").status_code in (421, 403)


def test_bearer_token_auth(tiny_dir, cache_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    with http_server(tiny_dir, cache_dir, "http", "--auth-token-file", str(token_file)) as (process, base):
        missing = _post(base)
        assert missing.status_code == 401
        challenge = missing.headers["www-authenticate"]
        assert challenge.startswith("Bearer") and "resource_metadata=" in challenge
        metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
        assert httpx2.get(metadata_url, timeout=10).json()["resource"] == base + "/mcp"
        assert _post(base, Authorization="Bearer wrong").status_code == 401
        assert _post(base, Authorization="Bearer s3cret-token-value").status_code == 200
        assert httpx2.get(base + "/healthz", timeout=10).json()["state"] in ("loading", "ready")  # no token needed

        async def main():
            # The SDK's own client waits minutes for a reply; a bare httpx client gives up after 5 s,
            # which the first call can exceed (the model, and maybe the C++ extension, still loading).
            async with httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret-token-value"},
                                          timeout=httpx2.Timeout(30, read=300)) as http:
                async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
                    result = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 2})
                    assert not result.is_error

        anyio.run(main)
        process.terminate()
        process.wait(timeout=10)
        assert b"s3cret-token-value" not in process.stderr.read()  # never logged


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_non_loopback_bind_without_auth_refuses_to_start(tiny_dir, host):
    result = subprocess.run([sys.executable, *serve_args(tiny_dir, "--transport", "http", "--host", host)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "--auth-token-file" in result.stderr
