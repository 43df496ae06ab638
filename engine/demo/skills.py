"""The answer the demo model gives about itself (and to anything outside its skills)."""

from __future__ import annotations

ABOUT_TEXT = (
    "I am the gptoss-mcp demo model, a small gpt-oss model trained to show the server working. "
    "I can do arithmetic (+ and - up to 999, * up to 99), call the function tools you declare "
    "(weather, local time, currency conversion, web search) and tell you about myself. "
    "For real answers, load a gpt-oss checkpoint: gptoss-mcp serve --model openai/gpt-oss-20b "
    "(or a model directory).")
