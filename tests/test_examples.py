"""Each example runs against a generated model, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, model: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTOSS_CACHE_DIR": str(cache_dir)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, str(EXAMPLES / script), str(model)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_mcp_client_example(tiny_dir, tmp_path):
    result = _run("mcp_client.py", tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tools: ['generate', 'embed', 'set_reasoning_effort']") == 2
    assert result.stdout.count("embedding dimensions: 64") == 2 and "== Streamable HTTP" in result.stdout


def test_openai_agents_example(tiny_dir, tmp_path):
    result = _run("openai_agents.py", tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tools: ['generate', 'embed', 'set_reasoning_effort']" in result.stdout and "direct call:" in result.stdout


def test_claude_desktop_config_is_a_valid_host_entry():
    entry = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())["mcpServers"]["gpt-oss"]
    assert entry["command"].endswith("gptoss-mcp") and entry["args"][0] == "serve"
