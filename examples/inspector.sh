#!/usr/bin/env bash
# The MCP Inspector CLI (npm) against gptoss-mcp: over stdio, then over Streamable HTTP.
# Usage: examples/inspector.sh [MODEL]   (MODEL defaults to the built-in demo model)
set -euo pipefail
MODEL=${1:-demo}
GPTOSS=${GPTOSS:-gptoss-mcp}
INSPECT=(npx -y @modelcontextprotocol/inspector@2.12.0 --cli)

# stdio: the Inspector starts the server itself.
"${INSPECT[@]}" "$GPTOSS" serve --model "$MODEL" --method tools/list --strict
"${INSPECT[@]}" "$GPTOSS" serve --model "$MODEL" --method tools/call --tool-name generate \
  --tool-args-json '{"prompt": "Say hello", "max_tokens": 64, "reasoning_effort": "low"}'
"${INSPECT[@]}" "$GPTOSS" serve --model "$MODEL" --method resources/read --uri gptoss://status

# Streamable HTTP: start the server, talk to http://127.0.0.1:8765/mcp (SSE would be /sse).
"$GPTOSS" serve --model "$MODEL" --transport http --port 8765 & SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf http://127.0.0.1:8765/healthz >/dev/null; do sleep 0.5; done
"${INSPECT[@]}" http://127.0.0.1:8765/mcp --method tools/call --tool-name embed \
  --tool-args-json '{"texts": ["first text", "second text"]}'
