"""The MCP surface: tools generate / embed / set_reasoning_effort, three JSON resources, one prompt.

Thin wiring only: the engine work happens in `EngineRunner` on its own thread, and the tools here
turn arguments into engine calls and engine outcomes into results or ToolErrors the host's model
can read and act on. Nothing here imports torch or the engine: that happens on the engine thread,
which starts loading once the first reply is out.
"""


import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from gptoss_mcp import __version__
from gptoss_mcp.http_security import transport_security
from gptoss_mcp.metrics import ServerMetrics
from gptoss_mcp.model_info import model_info, model_name
from gptoss_mcp.openai_api import OpenAIApi
from gptoss_mcp.runtime import Busy, EngineRunner, EngineUnavailable, Progress
from gptoss_mcp.schemas import (Effort, EmbedResult, EmbedUsage, GenerateResult, Message, NamedToolChoice,
                                ReasoningEffortResult, ResponseFormat, ToolCallOut, ToolSpec, Usage)
from gptoss_mcp.settings import ServerSettings

logger = logging.getLogger(__name__)

# Time for the first reply to be written after its handler returns, before the engine thread may
# import torch (whose library load holds the GIL for ~0.3 s).
_REPLY_WRITE_SECONDS = 0.1

INSTRUCTIONS = (
    "Runs OpenAI's open-weight gpt-oss model locally. Use `generate` to ask it something (it reasons "
    "first; reasoning_effort low/medium/high trades speed for depth), `embed` for text vectors, and "
    "`set_reasoning_effort` to change the default effort. gptoss://status tells whether the model is "
    "loaded.")


def _call_out(call) -> ToolCallOut:
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = None
    return ToolCallOut(id=call.id, name=call.name,
                       arguments=arguments if isinstance(arguments, dict) else call.arguments)


@dataclass
class ServerState:
    """Process-wide mutable settings (shared by every client of this process)."""

    reasoning_effort: str


class _ProgressReporter:
    """Sends notifications/progress with strictly increasing values (tokens so far)."""

    def __init__(self, ctx: Context, total: int | None):
        self._ctx, self._total, self._last = ctx, total, -1.0

    async def __call__(self, progress: Progress) -> None:
        value = max(float(progress.tokens), self._last + 0.001)  # keep-alives while nothing new is made
        self._last = value
        await self._ctx.report_progress(value, self._total, progress_message(progress))


def progress_message(progress: Progress) -> str:
    if progress.phase == "loading":
        step = f": {progress.load_step}" if progress.load_step else ""
        return f"loading the model ({progress.load_progress:.0%}){step}"
    if progress.phase == "queued":
        return f"queued behind {progress.ahead} request(s)" if progress.ahead else "queued, next to run"
    if progress.phase == "running":
        return progress.task
    if progress.phase == "prefilling":
        return f"prefilling {progress.prompt_tokens} prompt tokens"
    return progress.text


class _StartLoadingAfterFirstReply:
    """Server middleware: lets the engine thread start loading once the first request is answered."""

    def __init__(self, runner: EngineRunner):
        self._runner, self._answered = runner, False

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        try:
            return await call_next(ctx)
        finally:  # an error is a reply too
            if not self._answered and ctx.request_id is not None:
                self._answered = True
                self._runner.start_loading(after=_REPLY_WRITE_SECONDS)


def build_server(settings: ServerSettings, runner: EngineRunner, **server_options: Any) -> MCPServer:
    """The MCPServer for these settings; `server_options` go to MCPServer (auth hooks)."""
    state = ServerState(reasoning_effort=settings.reasoning_effort)
    name = model_name(settings)
    metrics = ServerMetrics(runner)

    # No lifespan: the model loads on the engine thread (nothing may wait for it before the first
    # reply), and the SSE transport would run a lifespan per connection. The caller owns the runner.
    mcp = MCPServer("gptoss-mcp", version=__version__, instructions=INSTRUCTIONS,
                    middleware=[_StartLoadingAfterFirstReply(runner)], **server_options)

    async def _engine_call(coroutine):
        try:
            return await coroutine
        except (EngineUnavailable, Busy, ValueError) as e:  # ValueError: bad input, the context limit
            raise ToolError(str(e)) from None

    @mcp.tool(
        description=(
            "Ask the local gpt-oss model. Give exactly one of `prompt` (a single user message) or "
            "`messages` (a conversation). The model reasons first (returned only with include_reasoning) "
            "and then answers in `text`. Higher reasoning_effort is slower but more thorough. With "
            "`response_format` the answer is JSON matching a schema (also in `parsed`); with `tools` the "
            "model may call functions (returned in `tool_calls`; send their results back as tool messages)."),
        annotations=ToolAnnotations(title="Generate with gpt-oss", readOnlyHint=True, openWorldHint=False))
    async def generate(
        ctx: Context,
        prompt: Annotated[str | None, Field(description="The user's message.")] = None,
        messages: Annotated[list[Message] | None, Field(
            description="A conversation, oldest first, instead of `prompt`.")] = None,
        instructions: Annotated[str | None, Field(description="Developer instructions for the model.")] = None,
        reasoning_effort: Annotated[Effort | None, Field(
            description="low, medium or high; defaults to the server's current setting.")] = None,
        max_tokens: Annotated[int | None, Field(ge=1, description=(
            f"Most tokens to generate, reasoning included (server limit {settings.max_tokens_limit}, "
            f"default {settings.default_max_tokens})."))] = None,
        temperature: Annotated[float, Field(ge=0, le=2, description="0 is greedy; 1.0 is recommended.")] = 1.0,
        top_p: Annotated[float, Field(gt=0, le=1, description="Nucleus sampling mass.")] = 1.0,
        seed: Annotated[int | None, Field(description="Same seed, same answer.")] = None,
        stop: Annotated[list[str] | None, Field(max_length=8, description="Strings that end the answer.")] = None,
        include_reasoning: Annotated[bool, Field(description="Also return the chain of thought.")] = False,
        response_format: Annotated[ResponseFormat | None, Field(description=(
            "Make the answer JSON: {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\", \"strict\"}} "
            "(matching the schema; the value comes back in `parsed`) or {\"type\": \"json_object\"}."))] = None,
        tools: Annotated[list[ToolSpec] | None, Field(description=(
            "Functions the model may call: {name, description, parameters (JSON Schema)}. Its calls come back "
            "in `tool_calls` with arguments matching the parameters."))] = None,
        tool_choice: Annotated[Literal["auto", "none", "required"] | NamedToolChoice, Field(description=(
            "auto: answer or call; none: answer; required: call some tool; {\"name\": NAME}: call that tool."
            ))] = "auto",
        max_reasoning_tokens: Annotated[int | None, Field(ge=0, description=(
            "End the reasoning after this many tokens (default: none, except that a required JSON answer or "
            "tool call keeps a quarter of max_tokens)."))] = None,
    ) -> GenerateResult:
        metrics.count("mcp", "generate")
        if (prompt is None) == (messages is None):
            raise ToolError("give exactly one of 'prompt' or 'messages'")
        if max_tokens is not None and max_tokens > settings.max_tokens_limit:
            raise ToolError(f"max_tokens {max_tokens} exceeds the server limit of {settings.max_tokens_limit}")
        if stop and any(not s for s in stop):
            raise ToolError("stop strings must not be empty")
        effort = reasoning_effort or state.reasoning_effort
        conversation = [{"role": "user", "content": prompt}] if prompt is not None else \
            [m.model_dump(exclude_none=True) for m in messages]
        params = dict(max_tokens=max_tokens or settings.default_max_tokens, temperature=temperature, top_p=top_p,
                      seed=seed, stop=tuple(stop or ()), reasoning_effort=effort, instructions=instructions,
                      response_format=response_format.model_dump(by_alias=True, exclude_none=True)
                      if response_format else None,
                      tools=tuple(t.model_dump(exclude_none=True) for t in tools or ()),
                      tool_choice=tool_choice if isinstance(tool_choice, str) else
                      tool_choice.model_dump(exclude_none=True),
                      max_reasoning_tokens=max_reasoning_tokens)
        result = await _engine_call(runner.generate(conversation, params,
                                                    _ProgressReporter(ctx, params["max_tokens"])))
        finish = result.finish_reason if result.finish_reason in ("stop", "tool_calls") else "length"
        return GenerateResult(
            text=result.text, reasoning=result.reasoning if include_reasoning else None,
            finish_reason=finish, reasoning_effort=effort, model=name,
            usage=Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                        total_tokens=result.usage.total_tokens, cached_tokens=result.usage.cached_tokens),
            parsed=result.parsed, tool_calls=[_call_out(call) for call in result.tool_calls])

    @mcp.tool(
        description=("Embed texts with the local gpt-oss model: the mean of its final hidden states over each "
                     "text's tokens, L2-normalised unless normalize is false. Returns one vector per text."),
        annotations=ToolAnnotations(title="Embed with gpt-oss", readOnlyHint=True, openWorldHint=False))
    async def embed(
        ctx: Context,
        texts: Annotated[list[str], Field(min_length=1, description="The texts to embed (each non-empty).")],
        normalize: Annotated[bool, Field(description="Scale each vector to unit length.")] = True,
    ) -> EmbedResult:
        metrics.count("mcp", "embed")
        if len(texts) > settings.max_embed_texts:
            raise ToolError(f"texts has {len(texts)} entries; the server limit is {settings.max_embed_texts}")
        for i, text in enumerate(texts):
            if not text:
                raise ToolError(f"texts[{i}] is empty")
            if len(text) > settings.max_embed_text_chars:
                raise ToolError(f"texts[{i}] has {len(text)} characters; the server limit is "
                                f"{settings.max_embed_text_chars}")

        vectors, tokens = await _engine_call(runner.embed(texts, normalize, _ProgressReporter(ctx, None)))
        return EmbedResult(embeddings=vectors, dimensions=len(vectors[0]), model=name,
                           usage=EmbedUsage(prompt_tokens=tokens))

    @mcp.tool(
        description=("Set the default reasoning effort (low, medium or high) that `generate` uses when a call "
                     "gives none. Affects every client of this server process."),
        annotations=ToolAnnotations(title="Set reasoning effort", readOnlyHint=False, destructiveHint=False,
                                    idempotentHint=True, openWorldHint=False))
    async def set_reasoning_effort(
        effort: Annotated[Effort, Field(description="low, medium or high.")],
    ) -> ReasoningEffortResult:
        previous, state.reasoning_effort = state.reasoning_effort, effort
        logger.info("reasoning effort: %s -> %s", previous, effort)
        return ReasoningEffortResult(reasoning_effort=effort, previous=previous)

    @mcp.resource("gptoss://model", name="model", mime_type="application/json",
                  description="The served model: name, path, config, parameters, dtype, device, ops backend.")
    def model_resource() -> str:
        return json.dumps(model_info(settings, runner))

    @mcp.resource("gptoss://settings", name="settings", mime_type="application/json",
                  description="The server's current settings, including the default reasoning effort.")
    def settings_resource() -> str:
        return json.dumps({
            "reasoning_effort": state.reasoning_effort, "max_context": settings.max_context,
            "max_tokens_limit": settings.max_tokens_limit, "default_max_tokens": settings.default_max_tokens,
            "max_embed_texts": settings.max_embed_texts, "max_embed_text_chars": settings.max_embed_text_chars,
            "max_batch": settings.max_batch, "max_waiting": settings.max_waiting, "transport": settings.transport,
            "kv_cache_mb": settings.kv_cache_mb, "prefix_cache_mb": settings.prefix_cache_mb,
        })

    @mcp.resource("gptoss://status", name="status", mime_type="application/json",
                  description="Whether the model is loading, ready or failed (with the reason), and load statistics.")
    def status_resource() -> str:
        return json.dumps(runner.status())

    @mcp.prompt(name="ask", description="Ask gpt-oss a question with a chosen reasoning effort.")
    def ask(question: str, reasoning_effort: str = "medium") -> str:
        return (f"Use the `generate` tool with reasoning_effort=\"{reasoning_effort}\" to ask the local "
                f"gpt-oss model the following, then report its answer:\n\n{question}")

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"state": runner.state})

    if settings.serves_openai_api:
        api = OpenAIApi(settings, runner, name, lambda: state.reasoning_effort, transport_security(settings),
                        server_options.get("token_verifier"), metrics)
        api.register(mcp)
    return mcp
