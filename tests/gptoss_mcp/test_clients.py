"""Real SDK clients against `gptoss-mcp serve` subprocesses: stdio, Streamable HTTP and SSE, both eras."""

from __future__ import annotations

import json
import re
import time

import anyio
import pytest
from mcp import MCPError

from tests.gptoss_mcp.server_process import cancel_once_generating, client_for, http_server, stdio_params

TRANSPORTS = ["stdio", "http", "sse"]
MODES = ["legacy", "auto"]  # initialize-based 2025-11-25, and the SDK default (2026-07-28 when offered)


@pytest.fixture(scope="module", params=TRANSPORTS)
def target(request, tiny_dir, cache_dir):
    """(transport, how to reach it): one HTTP/SSE server per module, a stdio process per client."""
    if request.param == "stdio":
        yield "stdio", stdio_params(tiny_dir, cache_dir)
    else:
        with http_server(tiny_dir, cache_dir, request.param) as (_, base):
            yield request.param, base


def _structured(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


async def _read_json(client, uri: str) -> dict:
    result = await client.read_resource(uri)
    assert result.contents[0].mime_type == "application/json"
    return json.loads(result.contents[0].text)


async def _basic_session(client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"generate", "embed", "set_reasoning_effort"}
    assert all(t.output_schema and t.description for t in tools.values())
    assert tools["generate"].annotations.read_only_hint and tools["embed"].annotations.read_only_hint
    effort_tool = tools["set_reasoning_effort"].annotations
    assert effort_tool.read_only_hint is False and effort_tool.idempotent_hint is True
    assert {"prompt", "messages", "reasoning_effort", "max_tokens", "include_reasoning"} <= \
        set(tools["generate"].input_schema["properties"])

    out = _structured(await client.call_tool("generate", {"prompt": "Hello", "max_tokens": 4, "seed": 1}))
    assert out["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 4
    assert out["reasoning_effort"] == "medium" and out["model"] == "tiny" and isinstance(out["text"], str)
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 4 and out["reasoning"] is None
    chat = _structured(await client.call_tool("generate", {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 3, "temperature": 0, "include_reasoning": True, "reasoning_effort": "low"}))
    assert chat["reasoning_effort"] == "low" and isinstance(chat["reasoning"], str)

    vectors = _structured(await client.call_tool("embed", {"texts": ["a cat", "a dog", "数学"]}))
    assert vectors["dimensions"] == 64 and len(vectors["embeddings"]) == 3
    assert all(abs(sum(v * v for v in row) - 1) < 1e-4 for row in vectors["embeddings"])
    assert vectors["usage"]["prompt_tokens"] > 0

    changed = _structured(await client.call_tool("set_reasoning_effort", {"effort": "high"}))
    assert changed == {"reasoning_effort": "high", "previous": "medium"}
    out = _structured(await client.call_tool("generate", {"prompt": "Hi", "max_tokens": 2}))
    assert out["reasoning_effort"] == "high"
    assert (await _read_json(client, "gptoss://settings"))["reasoning_effort"] == "high"
    await client.call_tool("set_reasoning_effort", {"effort": "medium"})

    model = await _read_json(client, "gptoss://model")
    assert model["config"]["layers"] == 2 and model["demo"] is False and model["ops_backend"] == "extension"
    assert model["source"]["kind"] == "path" and "config.json" in model["source"]["files"]
    assert model["parameters"] > 0 and model["dtype"] == "bfloat16"
    assert model["cpu_kernels"] in {"amx", "avx512_bf16", "avx2", "portable"}
    status = await _read_json(client, "gptoss://status")
    assert status["state"] == "ready" and status["error"] is None and status["tokens_generated_total"] >= 9
    with pytest.raises(MCPError):
        await client.read_resource("gptoss://nothing")

    bad = {
        "exactly one of 'prompt' or 'messages'": ("generate", {"prompt": "a", "messages": []}),
        "max_tokens 100000 exceeds the server limit of 4096": ("generate", {"prompt": "a", "max_tokens": 100000}),
        "texts[1] is empty": ("embed", {"texts": ["x", ""]}),
        "effort": ("set_reasoning_effort", {"effort": "extreme"}),
    }
    for expected, (tool, arguments) in bad.items():
        result = await client.call_tool(tool, arguments)
        assert result.is_error and expected in result.content[0].text, (expected, result.content)
    # the server keeps serving after bad input
    assert _structured(await client.call_tool("generate", {"prompt": "ok", "max_tokens": 1}))


@pytest.mark.parametrize("mode", MODES)
def test_tools_resources_and_errors(target, mode):
    transport, where = target

    async def main():
        async with client_for(transport, where, mode) as client:
            await _basic_session(client)

    anyio.run(main)


@pytest.mark.parametrize("mode", MODES)
def test_progress_then_cancellation_then_a_working_request(target, mode):
    transport, where = target

    async def main():
        async with client_for(transport, where, mode) as client:
            progress = []

            async def on_progress(value, total, message):
                progress.append((time.monotonic(), value, total, message))

            # The random model writes header-less text, streamed once its "header" is given up (48 tokens).
            result = await client.call_tool("generate", {"prompt": "Tell a story", "max_tokens": 150, "seed": 3},
                                            progress_callback=on_progress)
            finished = time.monotonic()
            out = _structured(result)
            assert progress and all(t < finished for t, *_ in progress)
            values = [v for _, v, _, _ in progress]
            assert values == sorted(set(values)) and progress[-1][2] == 150
            texts = [m for *_, m in progress if m and not m.startswith(("loading", "queued", "prefilling"))]
            assert texts and all(out["text"].startswith(m) for m in texts)  # the text so far, growing

            await cancel_once_generating(client, {"prompt": "Go on", "max_tokens": 4000})

            deadline = time.monotonic() + 10  # until the cancelled call has left (it may not have started yet)
            while (status := await _read_json(client, "gptoss://status"))["requests_in_flight"] or \
                    status["requests_waiting"]:
                assert time.monotonic() < deadline, status
                await anyio.sleep(0.1)
            tokens = status["tokens_generated_total"]
            await anyio.sleep(0.5)
            assert (await _read_json(client, "gptoss://status"))["tokens_generated_total"] == tokens
            out = _structured(await client.call_tool("generate", {"prompt": "again", "max_tokens": 2}))
            assert out["usage"]["completion_tokens"] == 2

    anyio.run(main)


def test_concurrent_generates_while_the_protocol_stays_responsive(target):
    transport, where = target
    max_tokens = 150  # long enough that a warm engine is still decoding while we measure

    async def main():
        async with client_for(transport, where, "auto") as client:
            results, latencies = {}, []
            decoding = anyio.Event()

            async def on_progress(progress, total, message):
                # keep-alives while loading or queued count in thousandths; a whole token means decoding
                if progress >= 1:
                    decoding.set()

            async def generate(name):
                results[name] = _structured(await client.call_tool(
                    "generate", {"prompt": f"Request {name}", "max_tokens": max_tokens, "seed": 7},
                    progress_callback=on_progress))

            async with anyio.create_task_group() as tg:
                tg.start_soon(generate, "a")
                tg.start_soon(generate, "b")
                await decoding.wait()
                while len(results) < 2:
                    started = time.monotonic()
                    await client.list_tools()
                    status = await _read_json(client, "gptoss://status")
                    latencies.append((time.monotonic() - started, status["requests_in_flight"]))
                    await anyio.sleep(0.05)
            for r in results.values():  # ran to the limit, or sampled a stop token of the random model
                assert r["usage"]["completion_tokens"] == max_tokens or r["finish_reason"] == "stop", r
            during = [latency for latency, in_flight in latencies if in_flight]
            assert during and max(during) < 1.0, latencies

    anyio.run(main)


def test_four_concurrent_generates_share_the_batch_every_counter_returns_to_zero_and_the_next_turn_is_cached(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http") as (_, base):

        async def main():
            async with client_for("http", base, "auto") as client:
                results, progress, batch = {}, {i: 0 for i in range(4)}, []

                async def generate(i):
                    async def on_progress(value, total, message):
                        progress[i] += 1

                    results[i] = _structured(await client.call_tool(
                        "generate", {"prompt": f"Request {i}", "max_tokens": 200, "seed": i},
                        progress_callback=on_progress))

                async with anyio.create_task_group() as tg:
                    for i in range(4):
                        tg.start_soon(generate, i)
                    while len(results) < 4:
                        batch.append((await _read_json(client, "gptoss://status"))["active_sequences"])
                        await anyio.sleep(0.05)
                assert all(r["usage"]["completion_tokens"] == 200 or r["finish_reason"] == "stop"
                           for r in results.values()), results
                assert all(progress.values()) and max(batch) == 4, (progress, batch)  # all four decoded together
                status = await _read_json(client, "gptoss://status")
                assert (status["requests_in_flight"], status["requests_waiting"], status["active_sequences"],
                        status["kv_bytes"]) == (0, 0, 0, 0), status
                assert status["max_batch"] == 8
                # The next turn of conversation 0 resumes from what its first turn left in the prefix cache.
                turn = [{"role": "user", "content": "Request 0"},
                        {"role": "assistant", "content": results[0]["text"]}, {"role": "user", "content": "Go on."}]
                follow_up = _structured(await client.call_tool("generate", {"messages": turn, "max_tokens": 4}))
                assert 0 < follow_up["usage"]["cached_tokens"] < follow_up["usage"]["prompt_tokens"], follow_up
                cache = (await _read_json(client, "gptoss://status"))["prefix_cache"]
                assert cache["entries"] >= 1 and cache["bytes"] > 0, cache
                assert cache["hit_tokens_total"] >= follow_up["usage"]["cached_tokens"], cache

        anyio.run(main)


def test_kv_budget_and_prefix_cache_flags_over_stdio(tiny_dir, cache_dir):
    # The tiny model's KV cache takes 128 bytes per token (bf16): 1 MiB holds about 8000 positions.
    params = stdio_params(tiny_dir, cache_dir, "--kv-cache-mb", "1", "--prefix-cache-mb", "0",
                          "--max-context", "100000", "--max-tokens-limit", "20000")

    async def main():
        async with client_for("stdio", params, "auto") as client:
            refused = await client.call_tool("generate", {"prompt": "Hi", "max_tokens": 20000})
            assert refused.is_error, refused.content
            assert re.search(r"needs [\d.]+ MiB of KV cache \(\d+ prompt tokens \+ 20000 reply tokens\) but the "
                             r"KV budget is 1.0 MiB", refused.content[0].text), refused.content[0].text
            for _ in range(2):  # the same prompt twice: nothing is cached with the prefix cache off
                out = _structured(await client.call_tool("generate", {"prompt": "Hi", "max_tokens": 3}))
                assert out["usage"]["cached_tokens"] == 0
            status = await _read_json(client, "gptoss://status")
            assert status["kv_budget_bytes"] == 1 << 20 and status["kv_bytes"] == 0
            assert status["prefix_cache"]["entries"] == 0 and status["prefix_cache"]["budget_bytes"] == 0
            settings = await _read_json(client, "gptoss://settings")
            assert (settings["kv_cache_mb"], settings["prefix_cache_mb"]) == (1, 0)

    anyio.run(main)
