"""Progress from the first moment: a call that asked for progress gets at least one notification
before its result, even when it ends well inside one progress interval, on every transport and in
both protocol eras (over modern Streamable HTTP that makes the reply an SSE stream)."""

from __future__ import annotations

import json
import time

import anyio
import httpx2
import pytest

from tests.gptoss_mcp.server_process import client_for, http_server, stdio_params

INTERVAL = 2.0  # the largest allowed: the calls below end long before it


@pytest.fixture(scope="module", params=["stdio", "http", "sse"])
def target(request, tiny_dir, cache_dir):
    extra = ("--progress-interval", str(INTERVAL))
    if request.param == "stdio":
        yield "stdio", stdio_params(tiny_dir, cache_dir, *extra)
    else:
        with http_server(tiny_dir, cache_dir, request.param, *extra) as (_, base):
            yield request.param, base


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # initialize-based, and 2026-07-28 where offered
def test_a_short_call_reports_progress_before_its_result(target, mode):
    transport, where = target

    async def main():
        async with client_for(transport, where, mode) as client:
            await client.call_tool("generate", {"prompt": "warm up", "max_tokens": 1})  # the model is loaded
            for tool, arguments in [("generate", {"prompt": "Hi", "max_tokens": 2}), ("embed", {"texts": ["a b"]})]:
                progress = []

                async def on_progress(value, total, message):
                    progress.append((time.monotonic(), value, message))

                started = time.monotonic()
                result = await client.call_tool(tool, arguments, progress_callback=on_progress)
                finished = time.monotonic()
                assert not result.is_error, result.content
                assert finished - started < INTERVAL / 2  # well inside one interval
                assert progress and all(t < finished for t, *_ in progress), (tool, progress)
                assert progress[0][2] == "queued, next to run", progress

    anyio.run(main)


def test_modern_http_answers_a_short_call_with_an_sse_stream_that_starts_with_progress(tiny_dir, cache_dir):
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "generate"}
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "p1"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "generate", "arguments": {"prompt": "Hi", "max_tokens": 2}, "_meta": meta}}
    with http_server(tiny_dir, cache_dir, "http", "--progress-interval", str(INTERVAL)) as (_, base):
        for _ in range(2):  # the first call also waits for the model; the second is the short one
            reply = httpx2.post(base + "/mcp", json=body, headers=headers, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[0]["method"] == "notifications/progress" and events[0]["params"]["progressToken"] == "p1"
    assert events[0]["params"]["message"] == "queued, next to run", events[0]
    assert events[-1]["id"] == 1 and events[-1]["result"]["structuredContent"]["usage"]["completion_tokens"] == 2


def test_progress_messages_say_where_a_call_is():
    from gptoss_mcp.runtime import Progress
    from gptoss_mcp.server import progress_message

    assert progress_message(Progress("loading", load_progress=0.42)) == "loading the model (42%)"
    assert progress_message(Progress("loading", load_progress=0.02, load_step="importing torch")) == \
        "loading the model (2%): importing torch"
    assert progress_message(Progress("queued")) == "queued, next to run"
    assert progress_message(Progress("queued", ahead=2)) == "queued behind 2 request(s)"
    assert progress_message(Progress("running", task="embedding 3 text(s)")) == "embedding 3 text(s)"
    assert progress_message(Progress("prefilling", prompt_tokens=1234)) == "prefilling 1234 prompt tokens"
    assert progress_message(Progress("generating", tokens=5, text="Hello")) == "Hello"
