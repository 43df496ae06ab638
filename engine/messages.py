"""Conversation messages and function tools, from the shapes callers pass.

The engine's own dataclasses (ChatMessage, ToolCall, FunctionTool) and plain mappings are accepted,
including OpenAI's chat-completions shapes, mixed freely in one conversation:
- content: a string, None, or a list of text parts (`{"type": "text" | "input_text" | "output_text",
  "text"}`), joined;
- assistant reasoning: `reasoning` or `reasoning_content`;
- assistant tool calls: `{"name", "arguments"}` or `{"id", "type": "function", "function": {"name",
  "arguments"}}`, arguments a JSON string (kept as written) or a JSON value (written compactly);
- tool results: `{"role": "tool", "content"}` with `name`, or `tool_call_id` naming an earlier call
  (and so its tool), or neither (the latest call's tool);
- tools: `{"name", "description", "parameters"}` (optionally with `"type": "function"`) or
  `{"type": "function", "function": {...}}`.
A malformed entry is a ValueError naming its index and field, e.g. `messages[2].tool_calls[0].function.name`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTIONS = "functions."  # harmony's namespace of function tools: recipients are "functions.NAME"
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TEXT_PARTS = ("text", "input_text", "output_text")


@dataclass(frozen=True)
class ToolCall:
    recipient: str          # e.g. "functions.get_weather"
    arguments: str          # as the model wrote them (usually JSON)
    id: str | None = None   # the caller's id for the call, which tool results may refer to

    @property
    def name(self) -> str:
        return self.recipient.removeprefix(FUNCTIONS)


@dataclass(frozen=True)
class ChatMessage:
    """One conversation message. `reasoning` and `tool_calls` only on assistant messages; `name`
    on a tool message names the tool that produced it (default: the latest call's tool)."""

    role: str
    content: str = ""
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments object


def coerce_messages(messages: Iterable[ChatMessage | Mapping[str, Any]]) -> list[ChatMessage]:
    """ChatMessages for a conversation; tool results that give a `tool_call_id` get their tool's name."""
    chat: list[ChatMessage] = []
    call_names: dict[str, str] = {}  # tool_call_id -> tool name, from the assistant messages so far
    for i, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            message = _message_from_mapping(f"messages[{i}]", message, call_names)
        call_names.update((call.id, call.name) for call in message.tool_calls if call.id)
        chat.append(message)
    return chat


def coerce_tools(tools: Iterable[FunctionTool | Mapping[str, Any]]) -> tuple[FunctionTool, ...]:
    coerced = tuple(tool if isinstance(tool, FunctionTool) else _tool_from_mapping(f"tools[{k}]", tool)
                    for k, tool in enumerate(tools))
    for k, tool in enumerate(coerced):
        if not TOOL_NAME.fullmatch(tool.name):
            raise ValueError(f"tools[{k}].name must be 1-64 letters, digits, '_' or '-' (OpenAI's rule; a call "
                             f"names its tool in the message header), got {tool.name!r}")
    return coerced


def _message_from_mapping(where: str, message: Any, call_names: Mapping[str, str]) -> ChatMessage:
    if not isinstance(message, Mapping):
        raise ValueError(f"{where} must be a mapping with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {ROLES}, got {role!r}")
    content = _text(f"{where}.content", message.get("content"))
    reasoning = _reasoning(where, message)
    calls = message.get("tool_calls") or ()
    if calls and role != "assistant":
        raise ValueError(f"{where}.tool_calls: only assistant messages make tool calls (role is {role!r})")
    if isinstance(calls, (str, Mapping)) or not isinstance(calls, Iterable):
        raise ValueError(f"{where}.tool_calls must be a list, got {type(calls).__name__}")
    tool_calls = tuple(call if isinstance(call, ToolCall) else _call_from_mapping(f"{where}.tool_calls[{j}]", call)
                       for j, call in enumerate(calls))
    name = _optional_str(f"{where}.name", message.get("name"))
    if role == "tool" and name is None and message.get("tool_call_id") is not None:
        call_id = message["tool_call_id"]
        if call_id not in call_names:
            raise ValueError(f"{where}.tool_call_id {call_id!r} matches no tool call of an earlier assistant "
                             f"message (known ids: {sorted(call_names)})")
        name = call_names[call_id]
    return ChatMessage(role, content, reasoning, tool_calls, name if role == "tool" else None)


def _call_from_mapping(where: str, call: Any) -> ToolCall:
    function, field = _function(where, call, "a mapping")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        try:
            arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{field}.arguments must be a JSON string or a JSON value: {e}") from None
    return ToolCall(FUNCTIONS + function["name"], arguments, _optional_str(f"{where}.id", call.get("id")))


def _tool_from_mapping(where: str, tool: Any) -> FunctionTool:
    function, field = _function(where, tool, "a FunctionTool or a mapping with 'name'")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ValueError(f"{field}.parameters must be a JSON Schema object, got {type(parameters).__name__}")
    return FunctionTool(function["name"], _optional_str(f"{field}.description", function.get("description")) or "",
                        dict(parameters) if parameters is not None else None)


def _function(where: str, entry: Any, expected: str) -> tuple[Mapping[str, Any], str]:
    """The function part of a tool or a tool call, with its path for errors; its name is checked.
    Flat (`{"name", ...}`, as in OpenAI's Responses API) or OpenAI's chat-completions
    `{"type": "function", "function": {"name", ...}}`."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be {expected}, got {type(entry).__name__}")
    if entry.get("type", "function") != "function":
        raise ValueError(f"{where}.type {entry.get('type')!r} is not supported: only 'function'")
    function, field = entry, where
    if "function" in entry:
        function, field = entry["function"], f"{where}.function"
        if not isinstance(function, Mapping):
            raise ValueError(f"{field} must be a mapping with 'name', got {type(function).__name__}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field}.name must be a non-empty string, got {name!r}")
    return function, field


def _text(where: str, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) or not isinstance(content, Iterable):
        raise ValueError(f"{where} must be a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(f"{where}[{j}] must be a text part {{'type': 'text', 'text': str}}, got {kind!r}")
        texts.append(part["text"])
    return "".join(texts)


def _reasoning(where: str, message: Mapping[str, Any]) -> str | None:
    reasoning = _optional_str(f"{where}.reasoning", message.get("reasoning"))
    alias = _optional_str(f"{where}.reasoning_content", message.get("reasoning_content"))
    if reasoning and alias and reasoning != alias:
        raise ValueError(f"{where} gives both 'reasoning' and 'reasoning_content', and they differ")
    return reasoning or alias


def _optional_str(where: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    return value
