"""POST /v1/responses, a stateless subset of OpenAI's Responses API.

Input: a string, or a list of items: messages (`{role, content}` with text or input_text /
output_text parts), `function_call` and `function_call_output` items, and `reasoning` items (with
`reasoning_text` content, carried back while a turn is in progress). `instructions`,
`reasoning: {effort}`, function `tools`, `tool_choice`, `max_output_tokens`, `temperature`,
`top_p`, `text.format` (json_schema / json_object), `stream`. Nothing is stored:
`previous_response_id` is refused.

Output: a `reasoning` item (content `reasoning_text`, as the gpt-oss reference writes it), a `message`
item with `output_text`, `function_call` items. Streamed as the lifecycle events
(`response.created`, `.in_progress`, `.output_item.added` / `.done`, `.content_part.added` /
`.done`, `.reasoning_text.delta` / `.done`, `.output_text.delta` / `.done`,
`.function_call_arguments.delta` / `.done`, `response.completed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gptoss_mcp.openai_common import Limits, bad_request, effort, new_id, now, sampling_params, sse

PARAMS = {"input", "tools", "tool_choice", "text", "max_output_tokens", "reasoning", "instructions",
          "max_reasoning_tokens"}


def responses_request(body: dict[str, Any], limits: Limits) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, GenerationParams fields) of a responses request."""
    if body.get("previous_response_id") is not None:
        raise bad_request("previous_response_id is not supported: this server stores no responses; send the "
                          "whole conversation as input", "previous_response_id", "unsupported_parameter")
    params = sampling_params(body, limits, ("max_output_tokens",))
    reasoning = body.get("reasoning") or {}
    if not isinstance(reasoning, dict):
        raise bad_request("reasoning must be an object {effort}", "reasoning")
    params["reasoning_effort"] = effort(reasoning.get("effort"), "reasoning.effort", limits.reasoning_effort)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("instructions must be a string", "instructions")
        params["instructions"] = instructions
    tools = body.get("tools") or []
    if not isinstance(tools, list) or any(not isinstance(t, dict) or t.get("type") != "function" for t in tools):
        raise bad_request("tools: only function tools ({type: 'function', name, parameters}) are supported", "tools")
    params["tools"] = tuple(tools)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        choice = {"name": choice["name"]}  # the Responses API's flat shape
    if choice is not None:
        params["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise bad_request("text.format must be an object", "text")
        if fmt.get("type") == "json_schema":
            params["response_format"] = {"type": "json_schema", "json_schema": {
                k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}}
        elif fmt.get("type") != "text":
            params["response_format"] = fmt
    return _messages(body.get("input")), params


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("input must be a string or a non-empty list of items", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise bad_request(f"input[{i}] must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        elif kind == "function_call":
            messages.append({"role": "assistant", "tool_calls": [
                {"id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
        elif kind == "reasoning":
            text = "".join(part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict))
            messages.append({"role": "assistant", "reasoning": text})
        else:
            raise bad_request(f"input[{i}].type {kind!r} is not supported (message, function_call, "
                              f"function_call_output, reasoning)", "input")
    return messages


def _usage(result) -> dict[str, Any]:
    return {"input_tokens": result.usage.prompt_tokens, "output_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
            "input_tokens_details": {"cached_tokens": result.usage.cached_tokens},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def _message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(call, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            "name": call.name, "arguments": call.arguments, "status": status}


def _envelope(response_id: str, created: int, model: str, status: str, output: list, result=None,
              params: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = result is not None and result.finish_reason == "length"
    return {"id": response_id, "object": "response", "created_at": created, "model": model,
            "status": "incomplete" if incomplete else status,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "output": output, "parallel_tool_calls": False,
            "instructions": (params or {}).get("instructions"),
            "reasoning": {"effort": (params or {}).get("reasoning_effort"), "summary": None},
            "tool_choice": "auto", "tools": [], "temperature": (params or {}).get("temperature"),
            "top_p": (params or {}).get("top_p"), "max_output_tokens": (params or {}).get("max_tokens"),
            "usage": _usage(result) if result is not None else None}


def response(result, model: str, params: dict[str, Any]) -> dict[str, Any]:
    output = []
    if result.reasoning:
        output.append(_reasoning_item(new_id("rs_"), result.reasoning))
    if result.text or not result.tool_calls:
        output.append(_message_item(new_id("msg_"), result.text))
    output += [_call_item(call) for call in result.tool_calls]
    return _envelope(new_id("resp_"), now(), model, "completed", output, result, params)


async def events(first: Any, rest: AsyncIterator[Any], model: str, params: dict[str, Any]) -> AsyncIterator[str]:
    """The streamed lifecycle events, from runner.stream's items (lists of steps, then the result)."""
    response_id, created = new_id("resp_"), now()
    stream = _EventWriter()
    yield stream.event("response.created", response=_envelope(response_id, created, model, "in_progress", [],
                                                               params=params))
    yield stream.event("response.in_progress", response=_envelope(response_id, created, model, "in_progress", [],
                                                                  params=params))
    item = first
    while isinstance(item, list):
        for step in item:
            for event in stream.step(step):
                yield event
        item = await anext(rest)
    result = item
    for event in stream.catch_up(result):  # text the parser only placed at the end
        yield event
    for event in stream.close_item():
        yield event
    for call in result.tool_calls:
        for event in stream.call(call):
            yield event
    yield stream.event("response.completed", response=_envelope(response_id, created, model, "completed",
                                                                stream.output, result, params))


class _EventWriter:
    """Opens and closes output items as the reply moves between reasoning and answer text."""

    def __init__(self):
        self.sequence = 0
        self.output: list[dict[str, Any]] = []   # finished items
        self._kind: str | None = None             # "reasoning" | "message": the item being written
        self._id, self._text = "", ""
        self._sent = {"reasoning": "", "message": ""}  # all text streamed so far, by kind

    def event(self, kind: str, **fields: Any) -> str:
        self.sequence += 1
        return sse({"type": kind, "sequence_number": self.sequence - 1, **fields}, event=kind)

    def step(self, step) -> list[str]:
        if not step.text or step.channel not in ("analysis", "final"):
            return []
        return self._text_delta("reasoning" if step.channel == "analysis" else "message", step.text)

    def catch_up(self, result) -> list[str]:
        """Deltas for what the result holds beyond the streamed text (a reply without a harmony
        header is known to be the answer only at its end)."""
        out = []
        for kind, text in (("reasoning", result.reasoning), ("message", result.text)):
            if len(text) > len(self._sent[kind]) and text.startswith(self._sent[kind]):
                out += self._text_delta(kind, text[len(self._sent[kind]):])
        return out

    def _text_delta(self, kind: str, text: str) -> list[str]:
        out = [] if kind == self._kind else self.close_item() + self._open(kind)
        self._text += text
        self._sent[kind] += text
        delta = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        out.append(self.event(delta, item_id=self._id, output_index=len(self.output), content_index=0,
                              delta=text, **({"logprobs": []} if kind == "message" else {})))
        return out

    def _open(self, kind: str) -> list[str]:
        self._kind, self._text = kind, ""
        self._id = new_id("rs_" if kind == "reasoning" else "msg_")
        item = _reasoning_item(self._id, "", "in_progress") if kind == "reasoning" else \
            _message_item(self._id, None, "in_progress")
        part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else \
            {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        index = len(self.output)
        return [self.event("response.output_item.added", output_index=index, item=item),
                self.event("response.content_part.added", item_id=self._id, output_index=index, content_index=0,
                           part=part)]

    def close_item(self) -> list[str]:
        if self._kind is None:
            return []
        index, text = len(self.output), self._text
        if self._kind == "reasoning":
            item, part = _reasoning_item(self._id, text), {"type": "reasoning_text", "text": text}
            done = self.event("response.reasoning_text.done", item_id=self._id, output_index=index, content_index=0,
                              text=text)
        else:
            item = _message_item(self._id, text)
            part = item["content"][0]
            done = self.event("response.output_text.done", item_id=self._id, output_index=index, content_index=0,
                              text=text, logprobs=[])
        self._kind = None
        self.output.append(item)
        return [done, self.event("response.content_part.done", item_id=self._id, output_index=index,
                                 content_index=0, part=part),
                self.event("response.output_item.done", output_index=index, item=item)]

    def call(self, call) -> list[str]:
        item, index = _call_item(call), len(self.output)
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=index, item={**item, "arguments": "",
                                                                                   "status": "in_progress"}),
                self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=call.arguments),
                self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           name=call.name, arguments=call.arguments),
                self.event("response.output_item.done", output_index=index, item=item)]
