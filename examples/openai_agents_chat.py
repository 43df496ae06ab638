"""An OpenAI Agents SDK agent whose model is gptoss-mcp's own /v1 chat endpoint, calling a Python tool.

    python examples/openai_agents_chat.py [MODEL]

Starts `gptoss-mcp serve --transport http` on a free local port, points the SDK's chat-completions
model at its /v1, and runs an agent with one function tool. The agent stops at the first tool call
and reports the tool's own result, so the run ends even on a random-weight model (whose free text
is noise; the call itself is grammar-constrained). Needs no network and no OpenAI key.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Annotated

from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool,
                    set_tracing_disabled)
from openai import AsyncOpenAI
from pydantic import Field

MODEL = sys.argv[1] if len(sys.argv) > 1 else "demo"


@function_tool
def get_weather(city: Annotated[str, Field(max_length=24)]) -> str:
    """Current weather in a city."""  # (a bound, so that a random model's city name ends too)
    return f"sunny in {city or 'an unnamed city'}"


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gptoss_mcp", "serve", "--model", MODEL, "--transport", "http",
                               "--port", str(port)], env=os.environ)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:  # /healthz answers as soon as the server listens; the model loads in the background
        try:
            with urllib.request.urlopen(base + "/healthz") as reply:
                if b'"ready"' in reply.read():
                    return server, base
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)


async def main(base: str) -> None:
    set_tracing_disabled(True)  # traces would go to OpenAI's service
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused: no --auth-token-file")
    model_id = (await client.models.list()).data[0].id
    agent = Agent(
        name="weather", instructions="Use get_weather to answer.", tools=[get_weather],
        model=OpenAIChatCompletionsModel(model=model_id, openai_client=client),
        # required: call a tool on the first turn; greedy, so that the run is repeatable;
        # max_reasoning_tokens is this server's extension
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=400,
                                     extra_body={"max_reasoning_tokens": 16}),
        tool_use_behavior="stop_on_first_tool")
    result = await Runner.run(agent, "What is the weather in Oslo?")
    calls = [item.raw_item.name for item in result.new_items if item.type == "tool_call_item"]
    print("tool calls:", calls)
    print("final output:", result.final_output)


if __name__ == "__main__":
    server, base = start_server()
    try:
        asyncio.run(main(base))
    finally:
        server.terminate()
        server.wait(timeout=10)
