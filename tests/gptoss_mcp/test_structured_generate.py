"""Structured output and function calling through `generate`: the SDK client over Streamable HTTP
against a `gptoss-mcp serve` subprocess (random weights: every valid answer is the grammar's doing)."""

from __future__ import annotations

import json

import anyio
import jsonschema
import pytest

from tests.gptoss_mcp.server_process import client_for, http_server

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                   "required": ["city"], "additionalProperties": False}}}
PING = {"name": "ping", "description": "Is the service up?"}


@pytest.fixture(scope="module")
def server(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http") as (_, base):
        yield base


def _run(base, session):
    async def main():
        async with client_for("http", base, "auto") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            await session(client, tools["generate"])

    anyio.run(main)


def _valid_result(result, tool) -> dict:
    assert not result.is_error, result.content
    jsonschema.validate(result.structured_content, tool.output_schema)  # what the tool declares it returns
    return result.structured_content


def test_the_schemas_declare_the_new_fields(server):
    async def session(client, tool):
        inputs, outputs = tool.input_schema["properties"], tool.output_schema["properties"]
        assert {"response_format", "tools", "tool_choice", "max_reasoning_tokens"} <= set(inputs)
        assert {"parsed", "tool_calls"} <= set(outputs)
        assert "tool_calls" in json.dumps(tool.output_schema["properties"]["finish_reason"])
        assert "schema" in json.dumps(tool.input_schema)  # the json_schema's field keeps OpenAI's name

    _run(server, session)


def test_a_schema_constrained_generate(server):
    async def session(client, tool):
        for seed in (1, 2):
            out = _valid_result(await client.call_tool("generate", {
                "prompt": "Invent a person.", "max_tokens": 120, "seed": seed, "max_reasoning_tokens": 8,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "person", "schema": PERSON, "strict": True}}}), tool)
            assert out["finish_reason"] == "stop" and out["tool_calls"] == []
            jsonschema.validate(out["parsed"], PERSON)
            assert json.loads(out["text"]) == out["parsed"]

    _run(server, session)


def test_a_tool_calling_generate_and_the_turn_after_it(server):
    async def session(client, tool):
        out = _valid_result(await client.call_tool("generate", {
            "prompt": "Weather in Oslo?", "max_tokens": 120, "seed": 3, "max_reasoning_tokens": 8,
            "tools": [WEATHER, PING], "tool_choice": "required", "include_reasoning": True}), tool)
        assert out["finish_reason"] == "tool_calls"
        (call,) = out["tool_calls"]
        assert call["name"] in ("get_weather", "ping") and call["id"].startswith("call_")
        assert isinstance(call["arguments"], dict)
        jsonschema.validate(call["arguments"], WEATHER["function"]["parameters"] if call["name"] == "get_weather"
                            else {"type": "object", "maxProperties": 0})

        named = _valid_result(await client.call_tool("generate", {
            "prompt": "Weather in Oslo?", "max_tokens": 120, "seed": 4, "max_reasoning_tokens": 8,
            "tools": [WEATHER, PING], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}), tool)
        assert [c["name"] for c in named["tool_calls"]] == ["get_weather"]

        # OpenAI-shaped history: the call with its id, the result answering it; then a JSON answer
        follow_up = _valid_result(await client.call_tool("generate", {
            "messages": [{"role": "user", "content": "Weather in Oslo?"},
                         {"role": "assistant", "content": None, "reasoning": out["reasoning"] or "Use the tool.",
                          "tool_calls": [{"id": call["id"], "type": "function",
                                          "function": {"name": call["name"], "arguments": call["arguments"]}}]},
                         {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "clear"}'}],
            "max_tokens": 120, "seed": 5, "max_reasoning_tokens": 8, "tools": [WEATHER, PING],
            "tool_choice": "none", "response_format": {"type": "json_schema", "json_schema": {
                "name": "person", "schema": PERSON}}}), tool)
        assert follow_up["finish_reason"] == "stop" and follow_up["usage"]["cached_tokens"] > 0
        jsonschema.validate(follow_up["parsed"], PERSON)

    _run(server, session)


def test_bad_structure_is_an_error_naming_the_argument(server):
    bad = {
        "tool_choice names 'get_time', which is not among the declared tools": {
            "tools": [WEATHER], "tool_choice": {"name": "get_time"}},
        "tool_choice 'required' requires a tool call, so the reply never has the final answer": {
            "tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
        "response_format.json_schema.schema.properties.age.minimum: not valid JSON Schema": {
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
                "type": "object", "properties": {"age": {"type": "integer", "minimum": "zero"}}}}}},
        "tools[0].parameters: the grammar library cannot enforce this schema": {
            "tools": [{"name": "f", "parameters": {"if": {"type": "object"}}}]},
        "messages[1].tool_calls[0] calls 'get_time', which is not among the declared tools": {
            "messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "tool_calls": [{"name": "get_time", "arguments": {}}]},
                         {"role": "tool", "content": "noon"}], "tools": [WEATHER]},
        "tool_choice 'required' asks for a tool call but no tools are declared": {"tool_choice": "required"},
    }

    async def session(client, tool):
        for expected, arguments in bad.items():
            arguments = {"prompt": "Hi", **arguments} if "messages" not in arguments else arguments
            result = await client.call_tool("generate", {"max_tokens": 8, **arguments})
            assert result.is_error and expected in result.content[0].text, (expected, result.content)
        out = _valid_result(await client.call_tool("generate", {"prompt": "still here?", "max_tokens": 2}), tool)
        assert out["usage"]["completion_tokens"] == 2  # the server keeps serving

    _run(server, session)
