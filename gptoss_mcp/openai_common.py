"""What the OpenAI-compatible routes share: the error envelope and the request fields common to
chat completions and responses, read into the engine's GenerationParams fields."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

EFFORTS = ("low", "medium", "high")
# The argument an engine ValueError is about: its message starts with the argument's path.
_PARAM = re.compile(r"^(?:the )?([a-z_]+)(?:[\[.\s]|$)")


class OpenAIError(Exception):
    """An error answered in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


def from_value_error(error: ValueError, known: set[str]) -> OpenAIError:
    """A 400 for an engine ValueError (bad messages, tools, schema, the context limit), naming the
    request field its message starts with when that is one of `known`."""
    message = str(error)
    match = _PARAM.match(message)
    param = match.group(1) if match and match.group(1) in known else None
    code = "context_length_exceeded" if type(error).__name__ in ("ContextLimitError", "KVMemoryError") else None
    return OpenAIError(400, message, param, code)


@dataclass
class Limits:
    model: str              # the served model's name: the only model id
    max_tokens_limit: int
    default_max_tokens: int
    reasoning_effort: str   # the server's current default


def sampling_params(body: dict[str, Any], limits: Limits, max_tokens_fields: tuple[str, ...]) -> dict[str, Any]:
    """GenerationParams fields for the sampling settings, the token limit and the effort."""
    check_model(body, limits)
    max_tokens = None
    for name in max_tokens_fields:
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_request(f"{name} must be a positive integer, got {value!r}", name)
            if value > limits.max_tokens_limit:
                raise bad_request(f"{name} {value} exceeds the server limit of {limits.max_tokens_limit}", name)
            max_tokens = value
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be greater than 0", "top_p")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"seed must be an integer, got {seed!r}", "seed")
    params = dict(max_tokens=max_tokens or limits.default_max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    if body.get("max_reasoning_tokens") is not None:  # this server's extension (see README)
        params["max_reasoning_tokens"] = body["max_reasoning_tokens"]
    return params


def effort(value: Any, param: str, default: str) -> str:
    if value is None:
        return default
    if value not in EFFORTS:
        raise bad_request(f"{param} must be one of {list(EFFORTS)} for gpt-oss, got {value!r}", param,
                          "unsupported_value")
    return value


def check_model(body: dict[str, Any], limits: Limits) -> None:
    model = body.get("model")
    if model is not None and model != limits.model:
        raise OpenAIError(404, f"The model {model!r} does not exist; this server serves {limits.model!r}", "model",
                          "model_not_found")


def tools_and_choice(body: dict[str, Any]) -> dict[str, Any]:
    """GenerationParams' tools / tool_choice from OpenAI's (both tool shapes are the engine's too)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    out: dict[str, Any] = {"tools": tuple(tools)}
    if body.get("tool_choice") is not None:
        out["tool_choice"] = body["tool_choice"]
    return out


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"{name} must be a number between {low:g} and {high:g}, got {value!r}", name)
    return float(value)
