"""EngineRunner: one dedicated thread owns the Engine and its Scheduler; async callers hand it work.

The model loads on that thread in the background, and torch, the engine and the tokenizer are
imported there, never by the server's own modules, so the server answers its first message at once.
The thread may be held back until that reply is out (`start_loading`): importing torch holds the GIL
for a few tenths of a second at a time.

Generations are decoded together (engine.scheduler: continuous batching, up to `max_batch` at a
time); other work (embeddings) runs on the same thread between two steps. Requests beyond the batch
wait, at most `max_waiting` of them; more are answered "busy" at once. A request is cancelled
through a threading.Event that the scheduler polls before every step, so a cancelled call leaves
the batch within one step and the others go on.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

if TYPE_CHECKING:
    from engine import Engine, GenerationResult, GenerationStep
    from engine.scheduler import Request, Scheduler

logger = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
T = TypeVar("T")
_POLL_SECONDS = 0.02


class EngineUnavailable(RuntimeError):
    """The model failed to load; the message holds the reason."""


class Busy(RuntimeError):
    """Too many requests are already waiting for the engine."""


@dataclass
class Progress:
    """Where a call is and what it has produced so far, for progress notifications."""

    phase: Literal["loading", "queued", "running", "prefilling", "generating"]
    load_progress: float = 0.0
    load_step: str = ""        # what loading does now, e.g. "importing torch"
    ahead: int = 0             # requests that must leave the batch before this one joins it
    task: str = ""             # what a "running" call does, e.g. "embedding 3 texts"
    prompt_tokens: int = 0
    tokens: int = 0
    text: str = ""


# gptoss://status's prefix_cache before the engine (and its PrefixCache.stats) exists.
_NO_PREFIX_CACHE = {"entries": 0, "bytes": 0, "budget_bytes": 0, "hit_tokens_total": 0, "prompt_tokens_total": 0,
                    "hit_rate": 0.0}

ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclass
class _Work:
    """One accepted call, handed to the engine thread: a generation (messages and GenerationParams
    fields, made into a scheduler Request there) or other work (`run`)."""

    progress: Progress
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    run: Callable[[Engine], Any] | None = None
    request: Request | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    steps: collections.deque | None = None  # streamed generations: steps made, not yet taken
    accepted_at: float = 0.0                # monotonic time the engine thread took it
    first_step_at: float | None = None      # ... and made its first token


class TokenCounter:
    """Tokens generated so far, and the recent rate; thread-safe (the engine thread counts, status
    readers ask)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.total = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)  # (time, total)

    def add(self, tokens: int = 1) -> None:
        with self._lock:
            self.total += tokens
            self._recent.append((time.monotonic(), self.total))

    def per_second(self, window: float = 30.0) -> float:
        """Generated tokens per second over the last `window` seconds of generation."""
        with self._lock:
            now = time.monotonic()
            recent = [(t, n) for t, n in self._recent if now - t <= window]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])


class EngineRunner:
    def __init__(self, load: Callable[[Callable[[float, str], None]], Engine], max_waiting: int,
                 progress_interval: float = 1.0, start_timeout: float = 0.0, max_batch: int = 8):
        """
        Args:
            load: builds the Engine on the engine thread; gets a callback for load progress (0..1, and
                what it is doing).
            max_waiting: requests allowed to wait beyond the running batch before "busy".
            progress_interval: seconds between progress notifications of one call.
            start_timeout: seconds the engine thread waits for `start_loading()` before it loads anyway.
            max_batch: generations decoded together.
        """
        self.max_waiting, self.progress_interval, self.max_batch = max_waiting, progress_interval, max_batch
        self.state: State = "loading"
        self.error: str | None = None
        self.load_progress, self.load_step = 0.0, ""
        self.engine: Engine | None = None
        self._scheduler: Scheduler | None = None
        self._new_scheduler: Callable[[], Scheduler] | None = None  # set once the engine is loaded
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()  # None wakes the thread to stop
        self._accepted = 0         # calls handed over and not finished
        self._calls_running = 0    # non-generation work running now
        self.requests_total = 0
        self.tokens = TokenCounter()
        self._active: set[threading.Event] = set()  # cancel flags of accepted work
        self._may_load = threading.Event()
        self._load_timer: threading.Timer | None = None
        self._closed = False
        # Called on the engine thread with (GenerationResult, accepted, first token, finished) monotonic
        # times for every finished generation: the metrics' hook.
        self.on_generated: Callable[[GenerationResult, float, float | None, float], None] | None = None
        self._thread = threading.Thread(target=self._main, args=(load, start_timeout), name="gptoss-engine",
                                        daemon=True)
        self._thread.start()

    # --- lifecycle -------------------------------------------------------------------------------

    def start_loading(self, after: float = 0.0) -> None:
        """Lets the engine thread start loading `after` seconds from now, or at once."""
        if after <= 0:
            self._may_load.set()
            return
        with self._lock:
            if self._load_timer is None:
                self._load_timer = threading.Timer(after, self._may_load.set)
                self._load_timer.daemon = True
                self._load_timer.start()

    def _main(self, load: Callable[[Callable[[float, str], None]], Engine], start_timeout: float) -> None:
        self._may_load.wait(start_timeout)
        try:
            engine = load(self._set_load_progress)
            from engine.scheduler import Scheduler  # imported by the load, on this thread

            self._new_scheduler = functools.partial(Scheduler, engine, max_batch=self.max_batch)
            self._scheduler = self._new_scheduler()
        except Exception as e:  # any failure is reported through status and tool errors, never fatal
            logger.error("model failed to load: %s", e, exc_info=not isinstance(e, ValueError))
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            return
        self.engine = engine
        self.load_progress, self.load_step = 1.0, ""
        self.state = "ready"
        self._serve()

    def _set_load_progress(self, fraction: float, step: str = "") -> None:
        self.load_progress, self.load_step = max(self.load_progress, min(fraction, 1.0)), step

    def close(self) -> None:
        """Cancels accepted work and stops the engine thread after its current step."""
        with self._lock:
            self._closed = True
            for cancelled in self._active:
                cancelled.set()
        self._inbox.put(None)

    async def wait_ready(self, on_progress: ProgressCallback | None = None) -> Engine:
        """Waits for the model, reporting load progress.

        Raises:
            EngineUnavailable: the load failed (with its reason).
        """
        self.start_loading()
        last = 0.0
        while self.state == "loading":
            if on_progress and time.monotonic() - last >= self.progress_interval:
                last = time.monotonic()
                await on_progress(Progress("loading", load_progress=self.load_progress, load_step=self.load_step))
            await anyio.sleep(_POLL_SECONDS)
        if self.state == "failed":
            raise EngineUnavailable(f"the model failed to load: {self.error}")
        return self.engine

    # --- work ------------------------------------------------------------------------------------

    async def generate(self, messages: list[dict[str, Any]], params: dict[str, Any],
                       on_progress: ProgressCallback | None = None) -> GenerationResult:
        """Generates in the engine's batch; `params` are GenerationParams' fields (a bad one is a ValueError)."""
        return await self._submit(_Work(Progress("queued"), messages=messages, params=params), on_progress)

    async def stream(self, messages: list[dict[str, Any]], params: dict[str, Any],
                     on_progress: ProgressCallback | None = None) -> AsyncIterator[list[GenerationStep] | GenerationResult]:
        """Like generate, but yields the new GenerationSteps as they are made (a list every poll that
        has some), then the GenerationResult. Closing the iterator early cancels the generation."""
        work = _Work(Progress("queued"), messages=messages, params=params, steps=collections.deque())
        async for item in self._run(work, on_progress):
            yield item

    async def embed(self, texts: list[str], normalize: bool = True,
                    on_progress: ProgressCallback | None = None) -> tuple[list[list[float]], int]:
        """(one vector per text, the texts' token count); bad texts are a ValueError."""
        def work(engine):
            tokens = sum(len(ids) for ids in engine.tokenizer.encode_batch(texts))
            return engine.embed(texts, normalize=normalize).tolist(), tokens

        return await self.call(work, f"embedding {len(texts)} text(s)", on_progress)

    async def call(self, work: Callable[[Engine], T], task: str, on_progress: ProgressCallback | None = None) -> T:
        """Runs `work(engine)` on the engine thread between two steps; `task` says what it does."""
        return await self._submit(_Work(Progress("queued", task=task), run=work), on_progress)

    async def _submit(self, work: _Work, on_progress: ProgressCallback | None) -> Any:
        async for outcome in self._run(work, on_progress):
            pass
        return outcome

    async def _run(self, work: _Work, on_progress: ProgressCallback | None) -> AsyncIterator[Any]:
        """Hands `work` to the engine thread and follows it: yields lists of new steps (streamed
        generations only) and, last, the outcome."""
        await self.wait_ready(on_progress)
        with self._lock:
            if self._accepted >= self.max_batch + self.max_waiting:  # the batch and the waiting room are full
                raise Busy(f"the server is busy: {self._accepted - self.max_batch} requests are already waiting "
                           f"(limit {self.max_waiting}); try again later")
            work.progress.ahead = max(0, self._accepted - self.max_batch + 1)
            self._accepted += 1
            self.requests_total += 1
            self._active.add(work.cancelled)
        handed_over = False
        try:
            if on_progress:  # as the call is accepted: one that ends within an interval still reports
                await on_progress(work.progress)
            self._inbox.put(work)
            handed_over = True
            last = time.monotonic()
            while not work.future.done():
                await anyio.sleep(_POLL_SECONDS)
                if work.steps:
                    yield [work.steps.popleft() for _ in range(len(work.steps))]
                if on_progress and time.monotonic() - last >= self.progress_interval:
                    last = time.monotonic()
                    request = work.request  # set on the engine thread; running once it joined the batch
                    if request is not None and request.running and work.progress.phase == "queued":
                        work.progress.prompt_tokens, work.progress.phase = request.prompt_tokens, "prefilling"
                    await on_progress(work.progress)
            if work.steps:
                yield list(work.steps)
            yield work.future.result()
        except BaseException:
            work.cancelled.set()  # the caller went away (cancelled request, closed stream): it leaves the batch
            if not handed_over:
                with self._lock:
                    self._accepted -= 1
            raise
        finally:
            with self._lock:
                self._active.discard(work.cancelled)

    # --- the engine thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        submitted: list[_Work] = []
        while not self._closed:
            self._take_work(submitted, wait=self._scheduler.idle)
            if not self._scheduler.idle:
                try:
                    self._scheduler.step()
                except Exception as e:  # not expected (a step fails only its own requests): start afresh
                    logger.exception("a scheduler step failed; ending its %d request(s)", len(submitted))
                    self._scheduler = self._new_scheduler()
                    for work in submitted:
                        if not work.request.done:
                            work.request.error = e
            for work in [w for w in submitted if w.request.done]:
                submitted.remove(work)
                self._settle(work, work.request.result, work.request.error)

    def _take_work(self, submitted: list[_Work], wait: bool) -> None:
        """Takes what was handed over: generations join the scheduler, other work runs now."""
        while True:
            try:
                work = self._inbox.get(block=wait)
            except queue.Empty:
                return
            if work is None:  # close()
                return
            wait = False
            if work.cancelled.is_set():  # its caller is gone
                self._settle(work, None, None)
            elif work.run is not None:
                self._run_call(work)
            else:
                work.accepted_at = time.monotonic()
                try:
                    work.request = self._request_for(work)
                    self._scheduler.submit(work.request)
                except Exception as e:  # bad messages or params, the context limit: this request only
                    self._settle(work, None, e)
                    continue
                submitted.append(work)

    def _request_for(self, work: _Work) -> Request:
        from engine import GenerationParams  # imported by the load, on this thread
        from engine.scheduler import Request

        def on_step(step) -> None:
            work.progress.phase = "generating"
            work.progress.tokens += 1
            work.progress.text += step.text
            if work.first_step_at is None:
                work.first_step_at = time.monotonic()
            if work.steps is not None:
                work.steps.append(step)
            self.tokens.add()

        return Request(work.messages, GenerationParams(**work.params), on_step=on_step,
                       should_cancel=work.cancelled.is_set)

    def _run_call(self, work: _Work) -> None:
        work.progress.phase = "running"
        with self._lock:
            self._calls_running += 1
        try:
            result, error = work.run(self.engine), None
        except Exception as e:
            result, error = None, e
        finally:
            with self._lock:
                self._calls_running -= 1
        self._settle(work, result, error)

    def _settle(self, work: _Work, result: Any, error: BaseException | None) -> None:
        with self._lock:
            self._accepted -= 1
        if self.on_generated is not None and work.request is not None and work.request.result is not None:
            self.on_generated(work.request.result, work.accepted_at, work.first_step_at, time.monotonic())
        if error is not None:
            work.future.set_exception(error)
        else:
            work.future.set_result(result)

    def _running_count(self) -> int:
        return (self._scheduler.active if self._scheduler else 0) + self._calls_running

    # --- statistics ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            in_flight = self._running_count()
            waiting = self._accepted - in_flight
        scheduler = self._scheduler
        return {
            "state": self.state,
            "load_progress": round(self.load_progress, 3),
            "load_step": self.load_step,
            "error": self.error,
            "requests_in_flight": in_flight,
            "requests_waiting": waiting,
            "requests_total": self.requests_total,
            "tokens_generated_total": self.tokens.total,
            "recent_tokens_per_second": round(self.tokens.per_second(), 3),
            "active_sequences": scheduler.active if scheduler else 0,
            "max_batch": self.max_batch,
            "kv_bytes": scheduler.kv_bytes() if scheduler else 0,
            "kv_budget_bytes": self.engine.kv_budget_bytes if self.engine else 0,
            "prefix_cache": self.engine.prefix_cache.stats() if self.engine else _NO_PREFIX_CACHE,
        }
