"""The demo model over MCP, as a host meets it: the SDK client over a stdio subprocess of
`gptoss-mcp serve` (default model), an arithmetic question on fresh numbers and a tool round trip,
asserted on what the model answered."""

from __future__ import annotations

import json
import random

import anyio
from mcp import Client

from tests.gptoss_mcp.server_process import stdio_params

WEATHER_TOOL = {"name": "get_weather", "description": "Get the current weather in a location.",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                               "required": ["location"]}}


def test_the_demo_model_answers_sums_and_calls_tools_over_stdio(cache_dir):
    rng = random.Random(20261207)  # a fixed draw (the same test every run), not numbers picked to suit the model
    a, b = rng.randint(100, 999), rng.randint(100, 999)

    async def main():
        async with Client(stdio_params("demo", cache_dir)) as client:
            reply = await client.call_tool("generate", {"prompt": f"What is {a} + {b}?", "temperature": 0})
            assert not reply.is_error and str(a + b) in reply.structured_content["text"], reply.structured_content
            info = json.loads((await client.read_resource("gptoss://model")).contents[0].text)  # loaded by now
            assert info["demo"] is True and info["source"]["kind"] == "demo"
            assert [s["name"] for s in info["skills"]] == ["arithmetic", "function calls", "about itself"]

            messages = [{"role": "user", "content": "What's the weather in Lima?"}]
            first = await client.call_tool("generate", {"messages": messages, "tools": [WEATHER_TOOL],
                                                        "temperature": 0, "include_reasoning": True})
            calls = first.structured_content["tool_calls"]
            assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", {"location": "Lima"})], first
            messages += [{"role": "assistant", "reasoning": first.structured_content["reasoning"],
                          "tool_calls": [{"id": calls[0]["id"], "name": "get_weather",
                                          "arguments": calls[0]["arguments"]}]},
                         {"role": "tool", "tool_call_id": calls[0]["id"], "content": "19 °C, cloudy"}]
            second = await client.call_tool("generate", {"messages": messages, "tools": [WEATHER_TOOL],
                                                         "temperature": 0})
            assert "19 °C, cloudy" in second.structured_content["text"], second.structured_content

    anyio.run(main)
