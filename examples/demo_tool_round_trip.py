"""A tool round trip with the built-in demo model, over MCP (stdio), end to end:

1. `generate` with a weather tool declared and "What's the weather in Oslo?": the model calls the tool;
2. this script runs the tool (a stand-in that answers from a table);
3. `generate` again with the call and its result in the conversation: the model states the result.

    python examples/demo_tool_round_trip.py [PLACE]      # default: Oslo
"""

import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters

PLACE = sys.argv[1] if len(sys.argv) > 1 else "Oslo"
SERVE = [sys.executable, "-m", "gptoss_mcp", "serve", "--model", "demo"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a location.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "City name"}},
                   "required": ["location"]},
}


def get_weather(location: str) -> str:
    """The tool itself: here a table, in a real host an API call."""
    return {"Oslo": "-3 °C, snow", "Lima": "19 °C, cloudy"}.get(location, "12 °C, clear sky")


async def main() -> None:
    settings = {name: value for name, value in os.environ.items() if name.startswith("GPTOSS_")}
    async with Client(StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=settings)) as client:
        messages = [{"role": "user", "content": f"What's the weather in {PLACE}?"}]
        first = await client.call_tool("generate", {"messages": messages, "tools": [WEATHER_TOOL],
                                                    "temperature": 0, "include_reasoning": True})
        reply = first.structured_content
        print("reasoning:", reply["reasoning"])
        if not reply["tool_calls"]:
            print("no tool call; the model answered:", reply["text"])
            sys.exit(1)
        call = reply["tool_calls"][0]
        print("tool call:", call["name"], json.dumps(call["arguments"]))
        result = get_weather(**call["arguments"])
        print("tool result:", result)
        messages += [{"role": "assistant", "reasoning": reply["reasoning"],
                      "tool_calls": [{"id": call["id"], "name": call["name"], "arguments": call["arguments"]}]},
                     {"role": "tool", "tool_call_id": call["id"], "content": result}]
        second = await client.call_tool("generate", {"messages": messages, "tools": [WEATHER_TOOL], "temperature": 0})
        print("answer:", second.structured_content["text"])


anyio.run(main)
