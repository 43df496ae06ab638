"""The OpenAI-compatible /v1 routes and /metrics, driven by the official `openai` client (and plain
HTTP where the client hides the status) against a `gptoss-mcp serve --transport http` subprocess."""

from __future__ import annotations

import base64
import json
import struct
import time

import httpx2 as httpx
import jsonschema
import openai
import pytest

from tests.gptoss_mcp.server_process import http_server

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                   "required": ["city"], "additionalProperties": False}}}
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tiny_dir, cache_dir, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    # float32: a reply resumed from the prefix cache equals a cold one token for token (bf16 may round apart)
    with http_server(tiny_dir, cache_dir, "http", "--auth-token-file", str(token_file), "--max-waiting", "0",
                     "--max-batch", "2", "--dtype", "float32") as (_, base):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def test_models(client):
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.object == "model"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion_splits_reasoning_and_reports_usage(client):
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=24, seed=3, reasoning_effort="low")
    choice = reply.choices[0]
    assert reply.model == "tiny" and choice.finish_reason in ("stop", "length")
    message = choice.message.model_dump()
    assert message["reasoning"] == message["reasoning_content"]  # the analysis channel, under both names
    assert reply.usage.completion_tokens == 24 or choice.finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=24, seed=3, reasoning_effort="low")
    assert again.choices[0].message.content == choice.message.content  # same seed, same reply
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the prefix cache, shared with MCP


def test_streamed_chat_equals_the_plain_one(client):
    request = dict(model="tiny", messages=[{"role": "user", "content": "Count to three."}], max_tokens=30,
                   temperature=0)
    plain = client.chat.completions.create(**request)
    content, reasoning, finish, usage = "", "", None, None
    for chunk in client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning") or ""
            finish = choice.finish_reason or finish
    assert content == (plain.choices[0].message.content or "")
    assert reasoning == (plain.choices[0].message.model_dump().get("reasoning") or "")
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens


def test_chat_response_format_and_tools(client):
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "A person."}], max_tokens=100, seed=2,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        extra_body={"max_reasoning_tokens": 6})
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)

    called = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Oslo?"}], max_tokens=100, seed=2,
        tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, extra_body={"max_reasoning_tokens": 6})
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    follow_up = client.chat.completions.create(
        model="tiny", max_tokens=100, seed=2, tools=[WEATHER], tool_choice="none",
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        messages=[{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": None, "reasoning_content": "Use the tool.",
                   "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
        extra_body={"max_reasoning_tokens": 6})
    jsonschema.validate(json.loads(follow_up.choices[0].message.content), PERSON)

    streamed = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], max_tokens=100, seed=2, stream=True,
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body={"max_reasoning_tokens": 6}))
    calls = [c for chunk in streamed for choice in chunk.choices for c in (choice.delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"] and calls[0].id.startswith("call_")
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_responses_plain_and_streamed(client):
    response = client.responses.create(model="tiny", input="Hello there", instructions="Be brief.",
                                       reasoning={"effort": "low"}, max_output_tokens=24, temperature=1.0)
    kinds = [item.type for item in response.output]
    assert "message" in kinds and response.usage.output_tokens <= 24
    assert response.status in ("completed", "incomplete")
    if "reasoning" in kinds:
        reasoning = next(item for item in response.output if item.type == "reasoning")
        assert reasoning.content[0].type == "reasoning_text"

    events = list(client.responses.create(model="tiny", input=[{"role": "user", "content": "Hi"}],
                                          max_output_tokens=30, stream=True))
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(part.text for item in final.output if item.type == "message" for part in item.content)
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = [e.text for e in events if e.type == "response.reasoning_text.done"]
    assert "".join(done) == reasoning

    called = client.responses.create(
        model="tiny", input="Weather?", max_output_tokens=100, temperature=0.5,
        tools=[{"type": "function", **WEATHER["function"]}], tool_choice={"type": "function", "name": "get_weather"},
        extra_body={"max_reasoning_tokens": 6})
    (call,) = [item for item in called.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    answer = client.responses.create(
        model="tiny", max_output_tokens=100, extra_body={"max_reasoning_tokens": 6},
        tools=[{"type": "function", **WEATHER["function"]}], tool_choice="none",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        input=[{"role": "user", "content": "Weather?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    jsonschema.validate(json.loads(answer.output_text), PERSON)


def test_embeddings_float_and_base64(client):
    floats = client.embeddings.create(model="tiny", input=["a cat", "a dog"])
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 64
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1) < 1e-4
    assert floats.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model="tiny", input="a cat", encoding_format="base64")
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    values = struct.unpack("<64f", base64.b64decode(encoded))
    assert values == pytest.approx(floats.data[0].embedding, abs=1e-6)


@pytest.mark.parametrize("request_kwargs, status, param", [
    (dict(reasoning_effort="minimal"), 400, "reasoning_effort"),
    (dict(max_tokens=100000), 400, "max_tokens"),
    (dict(temperature=5), 400, "temperature"),
    (dict(tool_choice="required"), 400, "tool_choice"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "objekt"}}}),
     400, "response_format"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), 400, "messages"),
    (dict(model="gpt-4o"), 404, "model"),
])
def test_errors_in_openai_envelope(server, request_kwargs, status, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **request_kwargs}
    reply = httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_auth_size_route_and_busy_errors(server, client):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = httpx.get(server + "/v1/models", headers=headers)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="nope", max_retries=0).models.list()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(server + "/v1/nothing", headers=auth).status_code == 404
    assert httpx.get(server + "/metrics").status_code == 401
    huge = httpx.post(server + "/v1/embeddings", headers=auth, content=b"{" + b" " * (5 << 20) + b"}")
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    bad_host = httpx.get(server + "/v1/models", headers={**auth, "Host": "evil.example"})
    assert bad_host.status_code == 421
    too_many = httpx.post(server + "/v1/embeddings", headers=auth, json={"model": "tiny", "input": ["x"] * 65})
    assert too_many.status_code == 413 and too_many.json()["error"]["param"] == "input"

    # --max-batch 2 --max-waiting 0: a third concurrent request is refused with 429 and Retry-After
    with httpx.Client(timeout=120) as http:
        streams = [http.stream("POST", server + "/v1/chat/completions", headers=auth, json={
            "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "stream": True})
            for _ in range(2)]
        opened = [s.__enter__() for s in streams]
        try:
            for response in opened:
                assert response.status_code == 200
                next(response.iter_lines())  # both are generating
            busy = http.post(server + "/v1/chat/completions", headers=auth, json={
                "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 4})
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        finally:
            for s in streams:
                s.__exit__(None, None, None)  # disconnects mid-stream
    _wait_idle(server, auth)


def _status(server, auth) -> dict:
    metrics = httpx.get(server + "/metrics", headers=auth).text
    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _wait_idle(server, auth) -> dict:
    deadline = time.monotonic() + 10
    while True:
        values = _status(server, auth)
        if values["gptoss_active_sequences"] == 0 and values["gptoss_requests_in_flight"] == 0:
            return values
        assert time.monotonic() < deadline, values
        time.sleep(0.1)


def test_a_disconnect_mid_stream_stops_decoding(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = _wait_idle(server, auth)["gptoss_generated_tokens_total"]
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", server + "/v1/chat/completions", headers=auth, json={
                "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 2000,
                "stream": True}) as response:
            lines = response.iter_lines()
            for _ in range(5):
                next(lines)
    values = _wait_idle(server, auth)  # the generation left the batch
    generated = values["gptoss_generated_tokens_total"] - before
    time.sleep(0.5)
    assert _status(server, auth)["gptoss_generated_tokens_total"] - before == generated < 2000  # and stays stopped


def test_metrics(server, client):
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for name in ("gptoss_requests_total{api=\"openai\",endpoint=\"chat.completions\"}", "gptoss_prompt_tokens_total",
                 "gptoss_completion_tokens_total", "gptoss_time_to_first_token_seconds_bucket",
                 "gptoss_time_per_output_token_seconds_count", "gptoss_requests_waiting", "gptoss_active_sequences",
                 "gptoss_prefix_cache_hit_tokens_total", "gptoss_kv_bytes"):
        assert name in text, name


def test_no_openai_api_turns_the_routes_off(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http", "--no-openai-api") as (_, base):
        assert httpx.get(base + "/v1/models").status_code == 404
        assert httpx.get(base + "/metrics").status_code == 404
        assert httpx.get(base + "/healthz").status_code == 200


def test_a_client_that_gives_up_on_a_plain_reply_cancels_it(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = _wait_idle(server, auth)["gptoss_generated_tokens_total"]
    with pytest.raises(httpx.TimeoutException):  # the client hangs up after 1.5 s
        httpx.post(server + "/v1/chat/completions", headers=auth, timeout=1.5, json={
            "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 3000})
    values = _wait_idle(server, auth)
    generated = values["gptoss_generated_tokens_total"] - before
    time.sleep(0.5)
    assert _status(server, auth)["gptoss_generated_tokens_total"] - before == generated < 3000
