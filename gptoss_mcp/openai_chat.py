"""POST /v1/chat/completions: OpenAI's request read into engine messages and GenerationParams
fields, and the engine's result (or its steps, streamed) written as OpenAI's completion / chunks.

The reasoning (harmony's analysis channel) goes out as `reasoning`, OpenAI's recommendation for
gpt-oss, mirrored as `reasoning_content` for clients that read that name. Tool calls come out whole
at the end of a streamed reply (gpt-oss makes one call per turn, ended by `<|call|>`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gptoss_mcp.openai_common import (Limits, bad_request, effort, new_id, now, sampling_params, sse,
                                      tools_and_choice)

# Request fields that engine errors may name (for the error envelope's `param`).
PARAMS = {"messages", "tools", "tool_choice", "response_format", "stop", "max_tokens", "reasoning_effort",
          "max_reasoning_tokens"}


def chat_request(body: dict[str, Any], limits: Limits) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, GenerationParams fields) of a chat completions request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    if body.get("n") not in (None, 1):
        raise bad_request("n must be 1: this server makes one choice per request", "n", "unsupported_value")
    if body.get("logprobs"):
        raise bad_request("logprobs are not supported", "logprobs", "unsupported_value")
    params = sampling_params(body, limits, ("max_tokens", "max_completion_tokens"))
    params["reasoning_effort"] = effort(body.get("reasoning_effort"), "reasoning_effort", limits.reasoning_effort)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 8:
            raise bad_request("stop must be a non-empty string or a list of at most 8 of them", "stop")
        params["stop"] = tuple(stops)
    params.update(tools_and_choice(body))  # parallel_tool_calls is accepted: gpt-oss calls once per turn
    if body.get("response_format") is not None:
        params["response_format"] = body["response_format"]
    return messages, params


def usage(result) -> dict[str, Any]:
    return {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": result.usage.cached_tokens}}


def _tool_calls(result) -> list[dict[str, Any]]:
    return [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]


def _finish(result) -> str:
    return result.finish_reason if result.finish_reason in ("stop", "length", "tool_calls") else "stop"


def completion(result, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None, "refusal": None,
                               "reasoning": result.reasoning or None, "reasoning_content": result.reasoning or None}
    if result.tool_calls:
        message["tool_calls"] = _tool_calls(result)
    return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": now(), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(result)}],
            "usage": usage(result)}


async def chunks(first: Any, rest: AsyncIterator[Any], model: str, include_usage: bool) -> AsyncIterator[str]:
    """SSE events of a streamed completion, from runner.stream's items (lists of steps, then the
    result); `first` is the item already taken (the request was accepted)."""
    chunk_id, created = new_id("chatcmpl-"), now()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    sent = {"content": "", "reasoning": ""}
    item = first
    while isinstance(item, list):
        for delta in _deltas(item):
            for key in sent:
                sent[key] += delta.get(key, "")
            yield chunk(delta)
        item = await anext(rest)
    result = item
    # Text the parser only placed at the end (a reply without a harmony header is the answer once it
    # is known not to be a header): what the deltas have not carried yet.
    for key, text in (("content", result.text), ("reasoning", result.reasoning)):
        if text.startswith(sent[key]) and len(text) > len(sent[key]):
            rest_of_it = text[len(sent[key]):]
            yield chunk({key: rest_of_it, **({"reasoning_content": rest_of_it} if key == "reasoning" else {})})
    if result.tool_calls:
        yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(_tool_calls(result))]})
    yield chunk({}, _finish(result))
    if include_usage:
        yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None, "choices": [], "usage": usage(result)})
    yield "data: [DONE]\n\n"


def _deltas(steps) -> list[dict[str, Any]]:
    """One delta per run of steps on the same channel: answer text as `content`, reasoning as
    `reasoning` (and `reasoning_content`); header tokens and tool-call arguments add nothing here."""
    deltas: list[dict[str, Any]] = []
    for step in steps:
        if not step.text or step.channel not in ("final", "analysis"):
            continue
        key = "content" if step.channel == "final" else "reasoning"
        if deltas and key in deltas[-1]:
            deltas[-1][key] += step.text
        else:
            deltas.append({key: step.text})
        if key == "reasoning":
            deltas[-1]["reasoning_content"] = deltas[-1]["reasoning"]
    return deltas
