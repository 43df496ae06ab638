"""What the demo model can do: its answer about itself (also to anything outside its skills), and
the skills as `gptoss://model` lists them."""

from __future__ import annotations

ABOUT_TEXT = (
    "I am the gptoss-mcp demo model, a small gpt-oss model trained to show the server working. "
    "I can do arithmetic (+ and - up to 999, * up to 99), call the function tools you declare "
    "(weather, local time, currency conversion, web search) and tell you about myself. "
    "For real answers, load a gpt-oss checkpoint: gptoss-mcp serve --model openai/gpt-oss-20b "
    "(or a model directory).")

SKILLS = [
    {"name": "arithmetic",
     "description": "A + B and A - B for integers 0-999, A * B for 0-99; the final answer states the result in "
                    "digits, the reasoning works it column by column at medium and high effort.",
     "examples": ["What is 23 + 58?", "Compute 604-87", "17 times 46"]},
    {"name": "function calls",
     "description": "Calls the declared function tool that covers the request (weather, local time, currency "
                    "conversion, web search) with the request's values, states the tool's result when it comes "
                    "back, and says so when no declared tool fits.",
     "examples": ["What's the weather in Oslo?", "What time is it in Lima?", "Convert 120 USD to EUR.",
                  "Search the web for the tallest tree"]},
    {"name": "about itself",
     "description": "Says what it is, what it can do and how to load a real gpt-oss checkpoint; anything outside "
                    "its skills gets the same answer.",
     "examples": ["Who are you?", "What can you do?", "help"]},
]
