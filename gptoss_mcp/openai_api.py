"""The OpenAI-compatible HTTP API under /v1, and GET /metrics, beside /mcp on the same server.

Every route answers through the same EngineRunner as the MCP tools (one batch, one prefix cache),
behind the same Host/Origin checks and bearer token as /mcp (OpenAI clients send their API key as
`Authorization: Bearer`). Errors use OpenAI's envelope. A client that disconnects cancels its
generation: a streamed one when Starlette notices the closed stream, a plain one through a watcher
that polls the connection while the engine works.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gptoss_mcp import openai_chat, openai_responses
from gptoss_mcp.metrics import ServerMetrics
from gptoss_mcp.openai_common import Limits, OpenAIError, bad_request, check_model, from_value_error, now
from gptoss_mcp.runtime import Busy, EngineRunner, EngineUnavailable
from gptoss_mcp.settings import ServerSettings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # as the MCP SDK's own limit for /mcp
_DISCONNECT_POLL_SECONDS = 0.1


class OpenAIApi:
    def __init__(self, settings: ServerSettings, runner: EngineRunner, model: str, effort: Callable[[], str],
                 security: TransportSecuritySettings, verifier, metrics: ServerMetrics):
        """`effort()` gives the server's current default reasoning effort (shared with MCP's
        set_reasoning_effort); `verifier` checks bearer tokens (None: no token required)."""
        self.settings, self.runner, self.model, self._effort = settings, runner, model, effort
        self._security, self._verifier, self.metrics = TransportSecurityMiddleware(security), verifier, metrics
        self._started = now()

    def register(self, mcp) -> None:
        """Adds the routes to the MCPServer's HTTP app (as custom routes)."""
        routes = [("/v1/models", ["GET"], self.models), ("/v1/models/{model_id:path}", ["GET"], self.one_model),
                  ("/v1/chat/completions", ["POST"], self.chat), ("/v1/responses", ["POST"], self.responses),
                  ("/v1/embeddings", ["POST"], self.embeddings), ("/metrics", ["GET"], self.prometheus),
                  ("/v1/{rest:path}", ["GET", "POST", "PUT", "DELETE", "PATCH"], self.unknown)]
        for path, methods, handler in routes:
            mcp.custom_route(path, methods=methods)(self._guarded(handler))

    def _limits(self) -> Limits:
        return Limits(self.model, self.settings.max_tokens_limit, self.settings.default_max_tokens, self._effort())

    # --- routes ----------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    async def one_model(self, request: Request) -> Response:
        check_model({"model": request.path_params["model_id"]}, self._limits())
        return JSONResponse(self._model_object())

    async def unknown(self, request: Request) -> Response:
        raise OpenAIError(404, f"Unknown route: {request.method} {request.url.path}", code="unknown_url")

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def chat(self, request: Request) -> Response:
        body = await _json_body(request)
        messages, params = openai_chat.chat_request(body, self._limits())
        self.metrics.count("openai", "chat.completions")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, messages, params, openai_chat.PARAMS,
                                      lambda first, rest: openai_chat.chunks(first, rest, self.model, include_usage))
        result = await self._generate(request, messages, params, openai_chat.PARAMS)
        return JSONResponse(openai_chat.completion(result, self.model)) if result is not None else Response()

    async def responses(self, request: Request) -> Response:
        body = await _json_body(request)
        messages, params = openai_responses.responses_request(body, self._limits())
        self.metrics.count("openai", "responses")
        if body.get("stream"):
            return await self._stream(request, messages, params, openai_responses.PARAMS,
                                      lambda first, rest: openai_responses.events(first, rest, self.model, params))
        result = await self._generate(request, messages, params, openai_responses.PARAMS)
        return JSONResponse(openai_responses.response(result, self.model, params)) if result is not None else Response()

    async def embeddings(self, request: Request) -> Response:
        body = await _json_body(request)
        check_model(body, self._limits())
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request("input must be a string or a non-empty list of strings (token arrays are not "
                              "supported)", "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad_request(f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format")
        if len(texts) > self.settings.max_embed_texts:
            raise OpenAIError(413, f"input has {len(texts)} texts; the server limit is {self.settings.max_embed_texts}",
                              "input", "too_many_inputs")
        for i, text in enumerate(texts):
            if not text:
                raise bad_request(f"input[{i}] is empty", "input")
            if len(text) > self.settings.max_embed_text_chars:
                raise OpenAIError(413, f"input[{i}] has {len(text)} characters; the server limit is "
                                       f"{self.settings.max_embed_text_chars}", "input", "input_too_long")
        self.metrics.count("openai", "embeddings")

        outcome = await self._engine(request, lambda: self.runner.embed(texts), {"input"})
        if outcome is None:
            return Response()
        vectors, tokens = outcome
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode()
                 if encoding == "base64" else row} for i, row in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": self.model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # --- plumbing --------------------------------------------------------------------------------

    def _model_object(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": self._started, "owned_by": "gptoss-mcp"}

    async def _generate(self, request: Request, messages, params, known: set[str]):
        return await self._engine(request, lambda: self.runner.generate(messages, params), known)

    async def _stream(self, request: Request, messages, params, known: set[str], write) -> Response:
        """Starts the generation and waits for its first steps (so that a bad request still gets its
        status code), then streams the rest as server-sent events."""
        steps = self.runner.stream(messages, params)
        first = await self._engine(request, lambda: anext(steps), known)
        if first is None:
            await steps.aclose()
            return Response()

        async def body():
            try:
                async for event in write(first, steps):
                    yield event
            except (Busy, EngineUnavailable, ValueError) as e:  # after the headers: an error event, then the end
                yield f"data: {json.dumps({'error': _error(e, known).body()})}\n\n"
            finally:
                await steps.aclose()  # a closed stream leaves the batch

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _engine(self, request: Request, call: Callable[[], Awaitable[Any]], known: set[str]) -> Any:
        """Awaits `call()`, or None if the client disconnects first (the call is then cancelled)."""
        outcome, error = None, None
        async with anyio.create_task_group() as group:
            async def watch() -> None:
                while not await request.is_disconnected():
                    await anyio.sleep(_DISCONNECT_POLL_SECONDS)
                logger.info("client of %s disconnected: cancelling", request.url.path)
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                outcome = await call()
            except (Busy, EngineUnavailable, ValueError) as e:  # caught here: a task group would wrap it
                error = e
            group.cancel_scope.cancel()
        if error is not None:
            raise _error(error, known)
        return outcome

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            try:
                rejected = await self._security.validate_request(request, is_post=False)
                if rejected is not None:  # Host or Origin not allowed (421 / 403)
                    raise OpenAIError(rejected.status_code, bytes(rejected.body).decode(errors="replace").strip()
                                      or "request rejected", code="forbidden")
                await self._authenticate(request)
                return await handler(request)
            except OpenAIError as e:
                return e.response()

        return route

    async def _authenticate(self, request: Request) -> None:
        if self._verifier is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or await self._verifier.verify_token(token.strip()) is None:
            raise OpenAIError(401, "Missing or incorrect API key: send the server's token as 'Authorization: "
                                   "Bearer <token>'", code="invalid_api_key")


def _error(e: Exception, known: set[str]) -> OpenAIError:
    if isinstance(e, Busy):
        return OpenAIError(429, str(e), code="server_busy", headers={"Retry-After": "1"})
    if isinstance(e, EngineUnavailable):
        return OpenAIError(503, str(e), code="model_unavailable")
    return from_value_error(e, known)


async def _json_body(request: Request) -> dict[str, Any]:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise OpenAIError(413, f"request body of {size} bytes exceeds the limit of {MAX_BODY_BYTES}",
                          code="request_too_large")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise OpenAIError(413, f"request body of {len(raw)} bytes exceeds the limit of {MAX_BODY_BYTES}",
                          code="request_too_large")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body
