"""Register gptoss-mcp as a tool server in the OpenAI Agents SDK (`pip install openai-agents`).

    python examples/openai_agents.py [MODEL]

The agent's own model needs an OpenAI-compatible endpoint; without OPENAI_API_KEY this example only
connects, lists the tools and calls `generate` directly, which needs no network.
"""

import asyncio
import os
import sys

from agents import Agent, Runner
from agents.mcp import MCPServerStdio

MODEL = sys.argv[1] if len(sys.argv) > 1 else "demo"


async def main() -> None:
    gpt_oss = MCPServerStdio(
        name="gpt-oss",
        # Stdio servers get only a few of this process's variables: pass on the GPTOSS_* settings.
        params={"command": sys.executable, "args": ["-m", "gptoss_mcp", "serve", "--model", MODEL],
                "env": {name: value for name, value in os.environ.items() if name.startswith("GPTOSS_")}},
        client_session_timeout_seconds=600,  # generation can take minutes on a CPU
    )
    async with gpt_oss:
        print("tools:", [tool.name for tool in await gpt_oss.list_tools()])
        direct = await gpt_oss.call_tool("generate", {"prompt": "Name a prime number.", "max_tokens": 32})
        print("direct call:", direct.structured_content["text"])
        agent = Agent(name="assistant", mcp_servers=[gpt_oss],
                      instructions="Answer with the help of the local gpt-oss model (the generate tool).")
        if os.environ.get("OPENAI_API_KEY"):
            result = await Runner.run(agent, "Ask gpt-oss for a haiku about autumn.")
            print("agent:", result.final_output)


asyncio.run(main())
