"""BackendRunner: the MCP tools and /v1 served by a remote OpenAI-compatible server (vLLM, SGLang,
llama.cpp's llama-server, another gptoss-mcp) instead of the in-process engine.

It has EngineRunner's interface (generate / stream / embed / status / wait_ready), so the MCP tools and
the /v1 routes do not know which one they talk to. Every generation is a streamed chat completion:
its deltas become steps (and so progress notifications, or /v1 chunks); closing the stream (a
cancelled MCP call, a /v1 client gone) closes the backend connection, which cancels the work there.

Faults are bounded and reported with the backend's URL (never its credentials):
- before any output: 429 and 503 answers and connection failures are retried `retries` times with
  exponential backoff (a Retry-After header is honoured up to 10 s), then reported;
- a stream that sends nothing for `timeout` seconds, or that ends without finishing, is an error;
- a backend 4xx (other than 429) is the caller's bad request, with the backend's message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2 as httpx

from gptoss_mcp.runtime import _NO_PREFIX_CACHE, Busy, EngineUnavailable, Progress, ProgressCallback, TokenCounter

logger = logging.getLogger(__name__)

_MAX_RETRY_AFTER = 10.0


class BackendUnavailable(EngineUnavailable):
    """The backend could not be reached or failed; the message names the URL and what happened."""


@dataclass(frozen=True)
class RemoteStep:  # the fields of engine.GenerationStep that callers read
    text: str
    channel: str | None


@dataclass(frozen=True)
class RemoteToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RemoteUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class RemoteResult:  # the fields of engine.GenerationResult that callers read
    text: str
    reasoning: str
    tool_calls: list[RemoteToolCall]
    finish_reason: str
    usage: RemoteUsage
    parsed: Any = None
    mask_seconds: float = 0.0


@dataclass
class _Reply:
    """A streamed chat completion being assembled."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish: str | None = None
    usage: RemoteUsage = field(default_factory=RemoteUsage)

    def add(self, chunk: dict[str, Any]) -> list[RemoteStep]:
        if chunk.get("usage"):
            usage = chunk["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            self.usage = RemoteUsage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached)
        steps = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""  # either name, once
            if reasoning:
                self.reasoning += reasoning
                steps.append(RemoteStep(reasoning, "analysis"))
            if delta.get("content"):
                self.text += delta["content"]
                steps.append(RemoteStep(delta["content"], "final"))
            for call in delta.get("tool_calls") or []:
                entry = self.calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
            self.finish = choice.get("finish_reason") or self.finish
        return steps

    def result(self, json_answer: bool) -> RemoteResult:
        calls = [RemoteToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
                 for i, c in sorted(self.calls.items())]
        parsed = None
        if json_answer and self.finish == "stop":
            try:
                parsed = json.loads(self.text)
            except ValueError:
                parsed = None
        finish = self.finish if self.finish in ("stop", "length", "tool_calls") else "stop"
        return RemoteResult(self.text, self.reasoning, calls, finish, self.usage, parsed)


class BackendRunner:
    def __init__(self, url: str, model: str | None = None, api_key_file: Path | None = None,
                 embeddings_url: str | None = None, max_waiting: int = 8, max_batch: int = 8,
                 progress_interval: float = 1.0, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.5):
        """
        Args:
            url: the backend's OpenAI API base (`http://host:8000/v1`; `/v1` is added if missing).
            model: the model id to ask for; default the first of the backend's /v1/models.
            api_key_file: a file holding the backend's API key (sent as a bearer token).
            embeddings_url: another server's OpenAI API base for embeddings (default: `url`'s).
            max_waiting, max_batch: calls beyond max_batch + max_waiting at once are "busy".
            timeout: seconds a stream (or any answer) may stay silent before it is an error.
            retries, backoff: retries of 429 / 503 / connection failures, first delay in seconds.
        """
        self.url = _api_base(url)
        self.embeddings_url = _api_base(embeddings_url) if embeddings_url else self.url
        self.public_url = _public(self.url)  # for messages and status: never the credentials
        self._embeddings_model = None if embeddings_url else model  # None: found on first use
        self.model = model
        self._key = Path(api_key_file).read_text(encoding="utf-8").strip() if api_key_file else None
        self.max_waiting, self.max_batch, self.progress_interval = max_waiting, max_batch, progress_interval
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.state = "loading"      # "ready" once the backend answered /models
        self.error: str | None = None
        self.reachable: bool | None = None
        self.engine = None          # no in-process engine
        self.on_generated = None    # metrics hook: (result, accepted, first token, finished)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.requests_total = 0
        self.tokens = TokenCounter()
        self._discovery: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start_loading(self, after: float = 0.0) -> None:
        """Starts asking the backend for its models (on the running event loop)."""
        if self._discovery is None:
            try:
                self._discovery = asyncio.get_running_loop().create_task(self._discover())
            except RuntimeError:  # no loop yet: wait_ready will do it
                pass

    async def wait_ready(self, on_progress: ProgressCallback | None = None) -> None:
        if self.state == "ready":
            return
        self.start_loading()
        if on_progress:
            await on_progress(Progress("loading", load_step=f"reaching the backend at {self.public_url}"))
        await (self._discovery if self._discovery is not None else self._discover())
        if self.state != "ready":
            raise BackendUnavailable(self.error or f"the backend at {self.public_url} is not reachable")

    async def _discover(self) -> None:
        try:
            reply = await self._request("GET", self.url + "/models")
            models = [m.get("id") for m in reply.json().get("data") or [] if isinstance(m, dict)]
        except (BackendUnavailable, ValueError) as e:
            self.reachable, self.error = False, str(e)
            self.state = "failed"
            self._discovery = None  # the next call tries again
            return
        if self.model is None:
            if not models:
                self.error, self.state = f"the backend at {self.public_url} lists no models", "failed"
                self._discovery = None
                return
            self.model = models[0]
        elif models and self.model not in models:
            logger.warning("the backend at %s lists %s, not %r: asking for it anyway", self.public_url, models, self.model)
        if self.embeddings_url == self.url:
            self._embeddings_model = self.model
        self.reachable, self.error, self.state = True, None, "ready"
        logger.info("backend %s ready, model %s", self.public_url, self.model)

    def close(self) -> None:
        pass

    # --- work ------------------------------------------------------------------------------------

    async def generate(self, messages: list[dict[str, Any]], params: dict[str, Any],
                       on_progress: ProgressCallback | None = None) -> RemoteResult:
        async for item in self.stream(messages, params, on_progress):
            outcome = item
        return outcome

    async def stream(self, messages: list[dict[str, Any]], params: dict[str, Any],
                     on_progress: ProgressCallback | None = None):
        """Yields lists of RemoteSteps as the backend's deltas arrive, then the RemoteResult."""
        await self.wait_ready(on_progress)
        self._enter()
        accepted, first_token = time.monotonic(), None
        body = self._chat_body(messages, params)
        events: asyncio.Queue = asyncio.Queue()
        reader = asyncio.get_running_loop().create_task(self._read_stream(body, events))
        reply, progress = _Reply(), Progress("running", task=f"waiting for the backend at {self.public_url}")
        last_event = last_progress = time.monotonic()
        try:
            if on_progress:  # as the call is accepted: one that ends within an interval still reports
                await on_progress(progress)
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=self.progress_interval)
                except asyncio.TimeoutError:
                    if time.monotonic() - last_event > self.timeout:
                        raise BackendUnavailable(f"the backend at {self.public_url} sent nothing for {self.timeout:g} s; "
                                                 f"gave up on the request") from None
                    kind, value = "quiet", None
                if kind == "error":
                    raise value
                if kind == "chunk":
                    last_event = time.monotonic()
                    steps = reply.add(value)
                    if steps:
                        first_token = first_token or time.monotonic()
                        self.tokens.add(len(steps))
                        progress.phase, progress.tokens = "generating", progress.tokens + len(steps)
                        progress.text += "".join(s.text for s in steps if s.channel == "final")
                        yield steps
                if kind == "end":
                    break
                if on_progress and time.monotonic() - last_progress >= self.progress_interval:
                    last_progress = time.monotonic()
                    await on_progress(progress)
            if reply.finish is None:
                raise BackendUnavailable(f"the backend at {self.public_url} ended its stream without finishing the reply")
            result = reply.result(params.get("response_format") is not None)
            if self.on_generated is not None:
                self.on_generated(result, accepted, first_token, time.monotonic())
            yield result
        finally:
            reader.cancel()  # closes the backend stream: the backend stops generating
            self._leave()

    async def embed(self, texts: list[str], normalize: bool = True,
                    on_progress: ProgressCallback | None = None) -> tuple[list[list[float]], int]:
        await self.wait_ready(on_progress)
        self._enter()
        try:
            if self._embeddings_model is None:  # another server's: ask it for its own model id
                models = (await self._request("GET", self.embeddings_url + "/models")).json().get("data") or []
                self._embeddings_model = models[0].get("id") if models else self.model
            reply = await self._request("POST", self.embeddings_url + "/embeddings",
                                        json={"model": self._embeddings_model, "input": texts}, missing=(
                f"the backend at {self.embeddings_url} has no /embeddings endpoint; serve embeddings there or "
                f"pass --backend-embeddings-url"))
        finally:
            self._leave()
        try:
            body = reply.json()
            vectors = [item["embedding"] for item in sorted(body.get("data") or [], key=lambda d: d.get("index", 0))]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendUnavailable(f"the backend at {_public(self.embeddings_url)} answered /embeddings with "
                                     f"something other than OpenAI's embeddings list") from None
        if len(vectors) != len(texts):
            raise BackendUnavailable(f"the backend at {self.embeddings_url} returned {len(vectors)} embeddings "
                                     f"for {len(texts)} texts")
        if normalize:
            vectors = [[v / (math.sqrt(sum(x * x for x in row)) or 1.0) for v in row] for row in vectors]
        return vectors, (body.get("usage") or {}).get("prompt_tokens") or 0

    # --- HTTP ------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _chat_body(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        messages = openai_messages(messages)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        for name in ("temperature", "top_p", "seed", "reasoning_effort", "response_format", "max_reasoning_tokens"):
            if params.get(name) is not None:
                body[name] = params[name]
        body["max_tokens"] = params.get("max_tokens")
        if params.get("stop"):
            body["stop"] = list(params["stop"])
        if params.get("tools"):
            body["tools"] = [t if "function" in t else {"type": "function", "function": {
                k: v for k, v in t.items() if k != "type"}} for t in params["tools"]]
            choice = params.get("tool_choice")
            if isinstance(choice, dict) and "name" in choice:
                choice = {"type": "function", "function": {"name": choice["name"]}}
            if choice is not None:
                body["tool_choice"] = choice
        if params.get("instructions"):
            body["messages"] = [{"role": "developer", "content": params["instructions"]}, *messages]
        return body

    async def _read_stream(self, body: dict[str, Any], events: asyncio.Queue) -> None:
        """Posts the request (retrying what may be retried) and puts ("chunk", dict), then ("end",
        None), or ("error", exception) on `events`."""
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        chunks = 0
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                for attempt in range(self.retries + 1):
                    try:
                        async with client.stream("POST", self.url + "/chat/completions", json=body,
                                                 headers=self._headers()) as response:
                            if await self._retry_later(attempt, response, self.url):
                                continue
                            if response.status_code >= 400:
                                await response.aread()
                                raise self._http_error(response, "chat/completions")
                            async for line in response.aiter_lines():
                                if not line.startswith("data:"):
                                    continue
                                data = line[5:].strip()
                                if data == "[DONE]":
                                    break
                                try:
                                    chunk = json.loads(data)
                                except ValueError:
                                    raise BackendUnavailable(f"the backend at {self.public_url} sent a malformed "
                                                             f"chunk: {data[:100]!r}") from None
                                if "error" in chunk:
                                    raise BackendUnavailable(f"the backend at {self.public_url} failed mid-stream: "
                                                             f"{_message(chunk)}")
                                chunks += 1
                                await events.put(("chunk", chunk))
                            await events.put(("end", None))
                            return
                    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                        if attempt < self.retries:
                            await asyncio.sleep(self._delay(attempt, None))
                            continue
                        raise BackendUnavailable(f"cannot connect to the backend at {self.public_url} "
                                                 f"({self.retries + 1} attempts): {e}") from None
        except httpx.ReadTimeout:
            await events.put(("error", BackendUnavailable(f"the backend at {self.public_url} sent nothing for "
                                                          f"{self.timeout:g} s; gave up on the request")))
        except (httpx.TransportError, httpx.StreamError) as e:
            await events.put(("error", BackendUnavailable(f"the stream from the backend at {self.public_url} was cut "
                                                          f"after {chunks} chunk(s): {type(e).__name__}: {e}")))
        except (BackendUnavailable, Busy, ValueError) as e:
            await events.put(("error", e))

    async def _request(self, method: str, url: str, json: Any = None, missing: str | None = None) -> httpx.Response:
        """One non-streamed call with the same retries; 404/405 raise `missing` when given."""
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        async with httpx.AsyncClient(timeout=timeout) as client:
            for attempt in range(self.retries + 1):
                try:
                    response = await client.request(method, url, json=json, headers=self._headers())
                except httpx.TransportError as e:
                    if attempt < self.retries:
                        await asyncio.sleep(self._delay(attempt, None))
                        continue
                    raise BackendUnavailable(f"cannot reach the backend at {_public(url)} "
                                             f"({self.retries + 1} attempts): {type(e).__name__}: {e}") from None
                if await self._retry_later(attempt, response, url):
                    continue
                if response.status_code in (404, 405, 501) and missing:
                    raise BackendUnavailable(f"{missing} (it answered {response.status_code}: "
                                             f"{_message(_json_or_text(response))})")
                if response.status_code >= 400:
                    raise self._http_error(response, url.rsplit("/", 1)[-1])
                return response
        raise AssertionError("every attempt returns or raises")

    async def _retry_later(self, attempt: int, response: httpx.Response, url: str) -> bool:
        """True after waiting out a 429 / 503 that may still be retried; raises once the retries are
        spent (Busy for 429); False for any other answer."""
        if response.status_code not in (429, 503):
            return False
        if attempt < self.retries:
            await asyncio.sleep(self._delay(attempt, response))
            return True
        raise (Busy if response.status_code == 429 else BackendUnavailable)(
            f"the backend at {_public(url)} answered {response.status_code} {self.retries + 1} times; gave up")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff * 2 ** attempt
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = min(max(float(retry_after), delay), _MAX_RETRY_AFTER)
            except ValueError:
                pass
        return delay

    def _http_error(self, response: httpx.Response, what: str) -> Exception:
        try:
            message = _message(response.json())
        except ValueError:
            message = response.text[:300]
        if 400 <= response.status_code < 500 and response.status_code != 429:
            return ValueError(f"the backend refused the request ({response.status_code}): {message}")
        return BackendUnavailable(f"the backend at {self.public_url} answered {response.status_code} to {what}: {message}")

    # --- accounting ------------------------------------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._in_flight >= self.max_batch + self.max_waiting:
                raise Busy(f"the server is busy: {self._in_flight} requests are already with the backend "
                           f"(limit {self.max_batch + self.max_waiting}); try again later")
            self._in_flight += 1
            self.requests_total += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            in_flight = self._in_flight
        return {
            "state": self.state, "load_progress": 1.0 if self.state == "ready" else 0.0, "load_step": "",
            "error": self.error, "requests_in_flight": in_flight, "requests_waiting": 0,
            "requests_total": self.requests_total, "tokens_generated_total": self.tokens.total,
            "recent_tokens_per_second": round(self.tokens.per_second(), 3), "active_sequences": in_flight,
            "max_batch": self.max_batch,
            "kv_bytes": 0, "kv_budget_bytes": 0, "prefix_cache": _NO_PREFIX_CACHE,
            "backend": self.describe(),
        }

    def describe(self) -> dict[str, Any]:
        return {"url": _public(self.url), "embeddings_url": _public(self.embeddings_url), "model": self.model,
                "reachable": self.reachable, "error": self.error}


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in OpenAI's chat shapes, as every backend reads them: tool calls as
    `{id, type: "function", function: {name, arguments (JSON text)}}`, tool results with the
    `tool_call_id` of their call (taken from the latest call of the tool they name)."""
    out, ids = [], {}  # tool name -> id of its latest call
    for message in messages:
        message = dict(message)
        calls = []
        for k, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or call
            arguments = function.get("arguments", "{}")
            call_id = call.get("id") or f"call_{len(out)}_{k}"
            ids[function.get("name")] = call_id
            calls.append({"id": call_id, "type": "function", "function": {
                "name": function.get("name"),
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        if calls:
            message["tool_calls"] = calls
        if message.get("role") == "tool" and not message.get("tool_call_id") and message.get("name") in ids:
            message["tool_call_id"] = ids[message["name"]]
        out.append(message)
    return out


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"--backend must be an http(s) URL, got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


def _public(url: str) -> str:
    """The URL without user:password@."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return json.dumps(body)[:300]
