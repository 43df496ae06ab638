"""Conversation-level generation: messages in, channel-split text out, streamed step by step.

Turns a harmony prompt into tokens with `engine.generate`, follows the completion with the harmony
parser, and decides when to stop: `<|return|>` or `<|call|>`, `<|end|>` of the final message, a stop
string in the final text, max_tokens, the context limit, or cancellation.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.harmony import CALL, END, REASONING_EFFORTS, STOP_TOKENS, CompletionParser
from engine.messages import FunctionTool, ToolCall, coerce_tools
from engine.structured_output import (ResponseFormat, ToolChoice, check_json_schema, coerce_response_format,
                                      coerce_tool_choice)

if TYPE_CHECKING:
    from engine.scheduler import Request, Scheduler

FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True)
class GenerationParams:
    """Per-call settings. temperature 1.0 / top_p 1.0 are OpenAI's recommendation for gpt-oss;
    temperature 0 is greedy. Stop strings apply to the final (answer) text.

    Structured output (engine.structured_output): `response_format` makes the final answer JSON
    matching a schema; `tools` are declared to the model and `tool_choice` says whether it may, must
    or must not call them (calls' arguments match the tool's parameter schema). Either one makes the
    reply grammar-constrained (engine.reply_constraint); `max_reasoning_tokens` bounds the reasoning
    (default: when an answer or a call is required, a quarter of max_tokens is kept for it)."""

    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    reasoning_effort: str = "medium"
    instructions: str | None = None
    tools: tuple[FunctionTool, ...] = ()  # also OpenAI-shaped mappings (engine.messages)
    current_date: str | None = None  # YYYY-MM-DD for the system message; None leaves it out
    response_format: ResponseFormat | Mapping[str, Any] | None = None  # also OpenAI's shapes
    tool_choice: ToolChoice | str | Mapping[str, Any] = "auto"
    max_reasoning_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be between 0 and 100, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {self.reasoning_effort!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "tools", coerce_tools(self.tools))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        self._check_structure()

    def _check_structure(self) -> None:
        names = [tool.name for tool in self.tools]
        for k, tool in enumerate(self.tools):
            if tool.name in names[:k]:
                raise ValueError(f"tools[{k}].name {tool.name!r} is declared twice")
            if tool.parameters is not None:
                check_json_schema(tool.parameters, f"tools[{k}].parameters")
        object.__setattr__(self, "response_format", coerce_response_format(self.response_format))
        object.__setattr__(self, "tool_choice", coerce_tool_choice(self.tool_choice, names))
        if self.response_format is not None and self.tool_choice.must_call:
            raise ValueError(f"tool_choice {self.tool_choice.name or self.tool_choice.mode!r} requires a tool call, "
                             f"so the reply never has the final answer that response_format describes: "
                             f"give one or the other")
        if self.response_format is not None and self.stop:
            raise ValueError("stop strings cannot be combined with response_format: the schema decides where "
                             "the JSON answer ends")
        limit = self.max_reasoning_tokens
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"max_reasoning_tokens must be a non-negative integer, got {limit!r}")

    @property
    def constrained(self) -> bool:
        """The reply is grammar-constrained: it has a response format, tools or a reasoning budget."""
        return self.response_format is not None or bool(self.tools) or self.max_reasoning_tokens is not None


@dataclass(frozen=True)
class GenerationStep:
    token: int
    text: str               # content text this token adds (never a partial UTF-8 character)
    channel: str | None     # "analysis", "final", "commentary", or None inside a message header


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens resumed from the prefix cache rather than computed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationResult:
    text: str                       # the final channel: the answer
    reasoning: str                  # the analysis channel
    tool_calls: list[ToolCall]      # each with a fresh id ("call_...")
    finish_reason: FinishReason     # "tool_calls" when the reply ended by calling
    usage: Usage
    completion_ids: list[int] = field(repr=False, default_factory=list)
    parsed: Any = None              # under a response_format: the answer's JSON value (None if cut short)
    mask_seconds: float = 0.0       # time spent constraining the logits (structured output)


class Completion:
    """Follows one reply token by token: channels through the harmony parser, stop strings held back,
    and whether the reply has ended (`ended`). Push-based, so that one scheduler step can feed the
    replies of many requests."""

    def __init__(self, parser: CompletionParser, params: GenerationParams, prompt_tokens: int):
        self._parser, self._stops, self.prompt_tokens = parser, _StopStrings(params.stop), prompt_tokens
        self._json_answer = params.response_format is not None
        self.tokens: list[int] = []
        self.ended = False
        self.cached_tokens = 0
        self.mask_seconds = 0.0

    def push(self, token: int) -> GenerationStep:
        self.tokens.append(token)
        text = self._parser.push(token)
        channel = self._parser.delta_channel  # of the message this token belongs to or ends
        ended = token in STOP_TOKENS or (token == END and channel == "final")
        if channel == "final":
            text, hit = self._stops.feed(text)
            if ended:
                text += self._stops.flush()
            ended = ended or hit
        self.ended = ended
        return GenerationStep(token, text, channel)

    def result(self, finish: FinishReason) -> GenerationResult:
        parsed = self._parser.result()
        calls = [ToolCall(call.recipient, call.arguments, f"call_{secrets.token_hex(12)}") for call in parsed.tool_calls]
        if finish == "stop" and calls and self.tokens[-1] == CALL:
            finish = "tool_calls"
        text = self._stops.cut(parsed.final)
        value = None
        if self._json_answer and finish == "stop":
            try:
                value = json.loads(text)
            except ValueError:  # only an unconstrained or cut-short answer can fail
                value = None
        return GenerationResult(
            text=text, reasoning=parsed.analysis, tool_calls=calls, finish_reason=finish,
            usage=Usage(self.prompt_tokens, len(self.tokens), self.cached_tokens), completion_ids=self.tokens,
            parsed=value, mask_seconds=self.mask_seconds)


class Generation:
    """The steps of one request, made by stepping its own scheduler as they are read: an iterator of
    GenerationStep; `result` is set once it is exhausted (or `run()` is called). `prompt_tokens` is
    the rendered prompt's length, known before the first step."""

    def __init__(self, scheduler: Scheduler, request: Request, made: list[GenerationStep]):
        """`made` is where the request's on_step puts its steps."""
        self._scheduler, self._request, self._made = scheduler, request, made
        self.prompt_tokens = request.prompt_tokens
        self._steps = self._run()
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[GenerationStep]:
        return self._steps

    def __next__(self) -> GenerationStep:
        return next(self._steps)

    def run(self) -> GenerationResult:
        for _ in self._steps:
            pass
        return self.result

    def _run(self) -> Iterator[GenerationStep]:
        while not self._request.done:
            self._scheduler.step()
            yield from self._made
            self._made.clear()
        if self._request.error is not None:
            raise self._request.error
        self.result = self._request.result


class _StopStrings:
    """Holds back final text that might be the start of a stop string, so none is ever emitted."""

    def __init__(self, stops: Sequence[str]):
        self._stops, self._pending = list(stops), ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._pending += text
        hits = [i for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            out, self._pending = self._pending[:min(hits)], ""
            return out, True
        hold = max((k for s in self._stops for k in range(1, len(s)) if self._pending.endswith(s[:k])), default=0)
        out = self._pending[:len(self._pending) - hold]
        self._pending = self._pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def cut(self, text: str) -> str:
        hits = [i for s in self._stops if (i := text.find(s)) >= 0]
        return text[:min(hits)] if hits else text
