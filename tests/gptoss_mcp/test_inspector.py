"""The MCP Inspector CLI (npm) as an independent client, over stdio and Streamable HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jsonschema
import pytest

from tests.gptoss_mcp.server_process import http_server, server_env

INSPECTOR = ["npx", "-y", "@modelcontextprotocol/inspector@2.12.0", "--cli"]
pytestmark = pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")


def _inspect(target: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INSPECTOR, *target, *args], capture_output=True, text=True, timeout=300)


def _stdio(model, cache_dir) -> list[str]:
    # MCP stdio clients give a server few of their own variables: the ones it needs go by -e.
    env = [arg for name, value in server_env(cache_dir).items() for arg in ("-e", f"{name}={value}")]
    return [sys.executable, "-m", "gptoss_mcp", "serve", "--model", str(model), *env]


def test_inspector_over_stdio(tiny_dir, cache_dir):
    server = _stdio(tiny_dir, cache_dir)
    strict = _inspect(server, "--method", "tools/list", "--strict")
    assert strict.returncode == 0, strict.stderr  # 6 would mean a schema hosts cannot use
    assert {t["name"] for t in json.loads(strict.stdout)["tools"]} == {"generate", "embed", "set_reasoning_effort"}

    call = _inspect(server, "--method", "tools/call", "--tool-name", "generate", "--tool-args-json",
                    '{"prompt": "hi", "max_tokens": 3}', "--format", "json", "-q")
    assert call.returncode == 0, call.stderr
    result = json.loads(call.stdout)["result"]
    assert result["isError"] is False and result["structuredContent"]["usage"]["completion_tokens"] == 3

    read = _inspect(server, "--method", "resources/read", "--uri", "gptoss://settings", "--format", "json", "-q")
    assert read.returncode == 0, read.stderr
    assert json.loads(json.loads(read.stdout)["result"]["contents"][0]["text"])["max_tokens_limit"] == 4096

    bad = _inspect(server, "--method", "tools/call", "--tool-name", "embed", "--tool-args-json", '{"texts": [""]}')
    assert bad.returncode == 5  # the Inspector's TOOL_ERROR: an isError result


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                          "required": ["city"], "additionalProperties": False}}


def test_inspector_structured_output_and_tool_calls(tiny_dir, cache_dir):
    server = _stdio(tiny_dir, cache_dir)
    listed = _inspect(server, "--method", "tools/list", "--format", "json", "-q")
    assert listed.returncode == 0, listed.stderr
    output_schema = next(t for t in json.loads(listed.stdout)["result"]["tools"] if t["name"] == "generate")["outputSchema"]

    def generate(arguments: dict) -> dict:
        call = _inspect(server, "--method", "tools/call", "--tool-name", "generate", "--tool-args-json",
                        json.dumps(arguments), "--format", "json", "-q")
        assert call.returncode == 0, call.stderr
        result = json.loads(call.stdout)["result"]
        assert result["isError"] is False
        jsonschema.validate(result["structuredContent"], output_schema)
        return result["structuredContent"]

    answer = generate({"prompt": "A person, please.", "max_tokens": 100, "seed": 2, "max_reasoning_tokens": 6,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    assert answer["finish_reason"] == "stop"
    jsonschema.validate(answer["parsed"], PERSON)

    called = generate({"prompt": "Weather?", "max_tokens": 100, "seed": 2, "max_reasoning_tokens": 6,
                       "tools": [WEATHER], "tool_choice": {"name": "get_weather"}})
    assert called["finish_reason"] == "tool_calls" and called["tool_calls"][0]["name"] == "get_weather"
    jsonschema.validate(called["tool_calls"][0]["arguments"], WEATHER["parameters"])


def test_inspector_over_http(tiny_dir, cache_dir):
    with http_server(tiny_dir, cache_dir, "http") as (_, base):
        call = _inspect([base + "/mcp"], "--method", "tools/call", "--tool-name", "embed", "--tool-args-json",
                        '{"texts": ["a", "b"]}', "--format", "json", "-q")
        assert call.returncode == 0, call.stderr
        assert json.loads(call.stdout)["result"]["structuredContent"]["dimensions"] == 64
