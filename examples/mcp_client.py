"""Use gptoss-mcp from Python with the official MCP SDK, over stdio and over Streamable HTTP.

    python examples/mcp_client.py [MODEL]          # MODEL: a gpt-oss directory, default: demo
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import anyio
from mcp import Client, StdioServerParameters

MODEL = sys.argv[1] if len(sys.argv) > 1 else "demo"
SERVE = [sys.executable, "-m", "gptoss_mcp", "serve", "--model", MODEL]


async def use(client: Client) -> None:
    tools = await client.list_tools()
    print("tools:", [t.name for t in tools.tools])

    async def show_progress(progress, total, message):
        print(f"  progress {progress:.0f}/{total}: {message[-60:]!r}")

    result = await client.call_tool("generate", {"prompt": "What is 2 + 2?", "max_tokens": 64,
                                                  "reasoning_effort": "low", "include_reasoning": True},
                                    progress_callback=show_progress)
    print("answer:", result.structured_content["text"])
    print("reasoning:", result.structured_content["reasoning"])
    vectors = await client.call_tool("embed", {"texts": ["a cat", "a dog"]})
    print("embedding dimensions:", vectors.structured_content["dimensions"])
    status = await client.read_resource("gptoss://status")
    print("status:", json.loads(status.contents[0].text))


async def main() -> None:
    print("== stdio")
    # A stdio client passes the server only a few variables of its own (PATH, HOME, ...): pass on
    # this shell's GPTOSS_* settings (cache directories, GPTOSS_OPS, ...) by name.
    settings = {name: value for name, value in os.environ.items() if name.startswith("GPTOSS_")}
    async with Client(StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=settings)) as client:
        await use(client)

    print("== Streamable HTTP")
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*SERVE, "--transport", "http", "--port", str(port)])
    try:
        for _ in range(120):  # wait until it listens
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            await use(client)
    finally:
        server.terminate()
        server.wait()


anyio.run(main)
