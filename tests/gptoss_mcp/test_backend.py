"""Remote backend mode (`serve --backend URL`): the MCP tools and /v1 served by another
OpenAI-compatible server. Against a real one (a second `gptoss-mcp serve` process, its /v1) through
the SDK client, and against a scripted local backend for the faults (429, 503, refused connections,
stalls, cut streams)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx2 as httpx
import jsonschema
import pytest

from gptoss_mcp.backend import BackendRunner, BackendUnavailable
from gptoss_mcp.runtime import Busy
from tests.gptoss_mcp.server_process import cancel_once_generating, client_for, free_port, http_server, stdio_params

WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def backend(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http") as (_, base):
        yield base


async def _read_json(client, uri: str) -> dict:
    return json.loads((await client.read_resource(uri)).contents[0].text)


def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_mcp_tools_through_a_gptoss_backend(backend, tiny_dir, cache_dir, transport):
    # credentials in the URL must never show in status or errors
    url = backend.replace("http://", "http://user:secret@") + "/v1"
    extra = ("--backend", url)

    async def session(client):
        progress = []

        async def on_progress(value, total, message):
            progress.append(message)

        out = (await client.call_tool("generate", {"prompt": "Tell a story", "max_tokens": 60, "seed": 3},
                                      progress_callback=on_progress)).structured_content
        assert out["model"] == "gpt-oss" and out["usage"]["completion_tokens"] > 0
        assert progress  # deltas became progress notifications

        called = (await client.call_tool("generate", {
            "prompt": "Weather?", "max_tokens": 100, "tools": [WEATHER], "tool_choice": "required",
            "max_reasoning_tokens": 5})).structured_content
        assert called["finish_reason"] == "tool_calls"
        jsonschema.validate(called["tool_calls"][0]["arguments"], WEATHER["parameters"])

        vectors = (await client.call_tool("embed", {"texts": ["a cat", "a dog"]})).structured_content
        assert vectors["dimensions"] == 64 and abs(sum(v * v for v in vectors["embeddings"][0]) - 1) < 1e-6

        model = await _read_json(client, "gptoss://model")
        status = await _read_json(client, "gptoss://status")
        for described in (model["backend"], status["backend"]):
            assert described["url"] == backend + "/v1" and described["model"] == "tiny" and described["reachable"]
        assert "secret" not in json.dumps([model, status])

        # cancelling the MCP call closes the backend stream: the backend's batch empties
        def decoding_on_the_backend():
            assert _metric(backend, "gptoss_active_sequences") == 1

        await cancel_once_generating(client, {"prompt": "Go on", "max_tokens": 3000}, decoding_on_the_backend)
        deadline = time.monotonic() + 10
        while _metric(backend, "gptoss_active_sequences"):
            assert time.monotonic() < deadline
            await anyio.sleep(0.1)
        generated = _metric(backend, "gptoss_generated_tokens_total")
        await anyio.sleep(0.5)
        assert _metric(backend, "gptoss_generated_tokens_total") == generated  # it stopped there

    async def main(where):
        async with client_for(transport, where, "auto") as client:
            await session(client)

    if transport == "stdio":
        anyio.run(main, stdio_params(tiny_dir, cache_dir, *extra))
    else:
        with http_server(tiny_dir, cache_dir, "http", *extra) as (_, front):
            anyio.run(main, front)
            # /v1 passes through too
            reply = httpx.post(front + "/v1/chat/completions", timeout=60, json={
                "model": "gpt-oss", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5


# --- a scripted backend for the faults --------------------------------------------------------------

def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class _Script(BaseHTTPRequestHandler):
    """Answers /v1/models; answers /v1/chat/completions by the next entry of `plan`."""

    plan: list[str] = []
    calls: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": "no such route"}})
            return
        step = self.plan.pop(0) if self.plan else "ok"
        self.calls.append(step)
        if step in ("429", "503"):
            self._json(int(step), {"error": {"message": f"scripted {step}"}}, {"Retry-After": "0"})
            return
        if step == "400":
            self._json(400, {"error": {"message": "scripted: messages are malformed"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if step == "reasoning_content":  # llama.cpp's name for the reasoning
            thought = {"choices": [{"index": 0, "delta": {"reasoning_content": "Think."}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(thought)}\n\n".encode())
        self.wfile.write(_chunk("Hello"))
        self.wfile.flush()
        if step == "stall":
            time.sleep(3)
        elif step == "cut":
            return  # the connection closes without a finish_reason or [DONE]
        self.wfile.write(_chunk(" world") + _chunk(None, "stop") + b"data: [DONE]\n\n")

    def _json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Script.plan, _Script.calls = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _runner(url: str, **options) -> BackendRunner:
    return BackendRunner(url, retries=2, backoff=0.01, timeout=1.0, progress_interval=0.2, **options)


def _generate(runner: BackendRunner):
    return anyio.run(runner.generate, [{"role": "user", "content": "hi"}], {"max_tokens": 5})


@pytest.mark.parametrize("plan, calls", [(["429", "ok"], 2), (["503", "503", "ok"], 3)])
def test_429_and_503_are_retried_with_backoff(scripted, plan, calls):
    _Script.plan = list(plan)
    result = _generate(_runner(scripted))
    assert result.text == "Hello world" and result.finish_reason == "stop" and len(_Script.calls) == calls


def test_503_until_the_retry_limit_is_reported(scripted):
    _Script.plan = ["503"] * 3
    with pytest.raises(BackendUnavailable, match=r"answered 503 3 times; gave up"):
        _generate(_runner(scripted))
    _Script.plan = ["429"] * 3
    with pytest.raises(Busy, match=r"answered 429 3 times"):
        _generate(_runner(scripted))
    assert _generate(_runner(scripted)).text == "Hello world"  # and the next request works


def test_a_refused_connection_is_reported_after_the_retries():
    runner = _runner(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"cannot reach the backend at http://127\.0\.0\.1:\d+/v1/models "
                                                 r"\(3 attempts\)"):
        _generate(runner)
    assert time.monotonic() - started < 5
    assert runner.status()["state"] == "failed" and runner.status()["backend"]["reachable"] is False


def test_a_stalled_stream_is_an_error_within_the_timeout(scripted):
    _Script.plan = ["stall"]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"sent nothing for 1 s"):
        _generate(_runner(scripted))
    assert time.monotonic() - started < 2.5


def test_a_stream_cut_mid_way_is_an_error(scripted):
    _Script.plan = ["cut"]
    with pytest.raises(BackendUnavailable, match=r"ended its stream without finishing|was cut"):
        _generate(_runner(scripted))


def test_a_backend_400_is_the_callers_bad_request(scripted):
    _Script.plan = ["400"]
    with pytest.raises(ValueError, match=r"the backend refused the request \(400\): scripted: messages are malformed"):
        _generate(_runner(scripted))


def test_reasoning_is_read_under_either_name(scripted):
    _Script.plan = ["reasoning_content"]
    result = _generate(_runner(scripted))
    assert result.reasoning == "Think." and result.text == "Hello world"


def test_embeddings_can_come_from_another_server(scripted, backend):
    runner = _runner(scripted, embeddings_url=backend)
    vectors, tokens = anyio.run(runner.embed, ["a cat", "a dog"])
    assert len(vectors) == 2 and len(vectors[0]) == 64 and tokens > 0
    assert runner.describe()["embeddings_url"] == backend + "/v1"


def test_embed_says_when_the_backend_has_no_embeddings(scripted):
    runner = _runner(scripted)
    with pytest.raises(BackendUnavailable, match=r"has no /embeddings endpoint; .* --backend-embeddings-url"):
        anyio.run(runner.embed, ["a"])


def test_faults_are_tool_errors_and_the_server_keeps_serving(scripted, tiny_dir, cache_dir):
    async def main():
        async with client_for("stdio", stdio_params(tiny_dir, cache_dir, "--backend", scripted,
                                                    "--backend-retries", "1", "--backend-timeout", "1"),
                              "auto") as client:
            _Script.plan = ["503", "503"]
            failed = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 5})
            assert failed.is_error and "answered 503 2 times; gave up" in failed.content[0].text
            _Script.plan = ["stall"]
            stalled = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 5})
            assert stalled.is_error and "sent nothing for 1 s" in stalled.content[0].text
            ok = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 5})
            assert not ok.is_error and ok.structured_content["text"] == "Hello world"

    anyio.run(main)


# --- llama.cpp's llama-server as the backend --------------------------------------------------------

def _llama_cpp_dir():
    """The llama.cpp tree with a built llama-server (a 10-minute build, kept outside the clone)."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("GPTOSS_LLAMA_CPP_DIR", "/work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    return root if (root / "build/bin/llama-server").is_file() and (root / "convert_hf_to_gguf.py").is_file() else None


@pytest.fixture(scope="module")
def llama_server(tiny_dir, tmp_path_factory):
    import subprocess
    import sys

    root = _llama_cpp_dir()
    if root is None:
        pytest.skip("llama.cpp's llama-server is not built here: set GPTOSS_LLAMA_CPP_DIR to a llama.cpp tree "
                    "with build/bin/llama-server (README, Testing, says how to build it)")
    gguf = tmp_path_factory.mktemp("gguf") / "tiny-bf16.gguf"
    converted = subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(tiny_dir), "--outfile",
                                str(gguf), "--outtype", "bf16"], capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-2000:]
    port = free_port()
    process = subprocess.Popen([str(root / "build/bin/llama-server"), "-m", str(gguf), "--port", str(port),
                                "-t", "2", "-c", "4096", "--metrics", "--jinja"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "llama-server did not start"
        time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=10)


def _llama_busy(base: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("llamacpp:requests_processing"):
            return float(line.split()[1])
    raise KeyError("llamacpp:requests_processing")


def test_mcp_tools_through_llama_server(llama_server, tiny_dir, cache_dir):
    async def main():
        async with client_for("stdio", stdio_params(tiny_dir, cache_dir, "--backend", llama_server), "auto") as client:
            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            out = await client.call_tool("generate", {"prompt": "Tell a story", "max_tokens": 40, "seed": 1},
                                         progress_callback=on_progress)
            assert not out.is_error, out.content
            assert out.structured_content["usage"]["completion_tokens"] > 0 and progress

            embedded = await client.call_tool("embed", {"texts": ["a"]})  # llama-server without --embeddings
            assert embedded.is_error and "embeddings" in embedded.content[0].text

            status = await _read_json(client, "gptoss://status")
            assert status["backend"]["reachable"] and status["backend"]["url"] == llama_server + "/v1"

            def decoding_on_llama_server():
                assert _llama_busy(llama_server) == 1

            # cancelling closes the stream to llama-server, which frees its slot
            await cancel_once_generating(client, {"prompt": "Go on", "max_tokens": 3000}, decoding_on_llama_server)
            deadline = time.monotonic() + 10
            while _llama_busy(llama_server):
                assert time.monotonic() < deadline
                await anyio.sleep(0.1)
            again = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 5})
            assert not again.is_error

    anyio.run(main)
