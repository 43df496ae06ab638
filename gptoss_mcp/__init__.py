"""gptoss-mcp: OpenAI's open-weight gpt-oss models as an MCP tool server, on an in-process engine."""

__version__ = "0.1.0"
