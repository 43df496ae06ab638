"""EngineRunner: one dedicated thread owns the Engine; async callers queue work onto it.

The model loads on that thread in the background, and torch, the engine and the tokenizer are
imported there, never by the server's own modules, so the server answers its first message at once.
The thread may be held back until that reply is out (`start_loading`): importing torch holds the GIL
for a few tenths of a second at a time.

Requests run one at a time in arrival order (a queue, not batching); the number waiting is bounded
and a full queue answers "busy" at once. A waiting or running request is cancelled through a
threading.Event that generation polls before every token, so a cancelled call stops within one
token step and frees the engine for the next one.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

if TYPE_CHECKING:
    from engine import Engine, GenerationResult

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
    ahead: int = 0             # requests in front of this one
    task: str = ""             # what a "running" call does, e.g. "embedding 3 texts"
    prompt_tokens: int = 0
    tokens: int = 0
    text: str = ""


ProgressCallback = Callable[[Progress], Awaitable[None]]


class EngineRunner:
    def __init__(self, load: Callable[[Callable[[float, str], None]], Engine], max_waiting: int,
                 progress_interval: float = 1.0, start_timeout: float = 0.0):
        """
        Args:
            load: builds the Engine on the engine thread; gets a callback for load progress (0..1, and
                what it is doing).
            max_waiting: requests allowed to queue behind the running one before "busy".
            progress_interval: seconds between progress notifications of one call.
            start_timeout: seconds the engine thread waits for `start_loading()` before it loads anyway.
        """
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-engine")
        self.max_waiting, self.progress_interval = max_waiting, progress_interval
        self.state: State = "loading"
        self.error: str | None = None
        self.load_progress, self.load_step = 0.0, ""
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self.requests_waiting = 0
        self.requests_in_flight = 0
        self.requests_total = 0
        self.tokens_generated_total = 0
        self._active: set[threading.Event] = set()  # cancel flags of submitted work
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)  # (time, tokens)
        self._may_load = threading.Event()
        self._load_timer: threading.Timer | None = None
        self._load_future = self._executor.submit(self._load, load, start_timeout)

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

    def _load(self, load: Callable[[Callable[[float, str], None]], Engine], start_timeout: float) -> None:
        self._may_load.wait(start_timeout)
        try:
            self.engine = load(self._set_load_progress)
        except Exception as e:  # any failure is reported through status and tool errors, never fatal
            logger.error("model failed to load: %s", e, exc_info=not isinstance(e, ValueError))
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            return
        self.load_progress, self.load_step = 1.0, ""
        self.state = "ready"

    def _set_load_progress(self, fraction: float, step: str = "") -> None:
        self.load_progress, self.load_step = max(self.load_progress, min(fraction, 1.0)), step

    def close(self) -> None:
        """Stops running work at its next token and drops queued work."""
        with self._lock:
            for cancelled in self._active:
                cancelled.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

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
        """Generates on the engine thread; `params` are GenerationParams' fields (a bad one is a ValueError)."""
        progress = Progress("queued")

        def work(engine: Engine, cancelled: threading.Event) -> GenerationResult:
            from engine import GenerationParams  # imported by the load, on this thread

            generation = engine.generate(messages, GenerationParams(**params), should_cancel=cancelled.is_set)
            progress.prompt_tokens, progress.phase = generation.prompt_tokens, "prefilling"
            for step in generation:
                progress.phase = "generating"
                progress.tokens += 1
                progress.text += step.text
                self._count_token()
            return generation.result

        return await self._submit(work, progress, on_progress)

    async def call(self, work: Callable[[Engine], T], task: str, on_progress: ProgressCallback | None = None) -> T:
        """Runs `work(engine)` on the engine thread, queued like a generation; `task` says what it does."""
        progress = Progress("queued", task=task)

        def run(engine: Engine, _cancelled: threading.Event) -> T:
            progress.phase = "running"
            return work(engine)

        return await self._submit(run, progress, on_progress)

    async def _submit(self, work: Callable[[Engine, threading.Event], T], progress: Progress,
                      on_progress: ProgressCallback | None) -> T:
        await self.wait_ready(on_progress)
        with self._lock:
            if self.requests_waiting >= self.max_waiting:
                raise Busy(f"the server is busy: {self.requests_waiting} requests are already waiting "
                           f"(limit {self.max_waiting}); try again later")
            self.requests_waiting += 1
            self.requests_total += 1
            progress.ahead = self.requests_waiting - 1 + self.requests_in_flight
        cancelled = threading.Event()
        with self._lock:
            self._active.add(cancelled)
        future: Future[T] | None = None
        try:
            if on_progress:  # as the call is accepted: one that ends within an interval still reports
                await on_progress(progress)
            future = self._executor.submit(self._run, work, cancelled)
            last = time.monotonic()
            while not future.done():
                await anyio.sleep(_POLL_SECONDS)
                if on_progress and time.monotonic() - last >= self.progress_interval:
                    last = time.monotonic()
                    await on_progress(progress)
            return future.result()
        except BaseException:
            cancelled.set()  # the caller went away (cancelled request, closed stream): stop decoding
            if future is None or future.cancel():  # never started: it will not run, nor wait any more
                with self._lock:
                    self.requests_waiting -= 1
            raise
        finally:
            with self._lock:
                self._active.discard(cancelled)

    def _run(self, work: Callable[[Engine, threading.Event], T], cancelled: threading.Event) -> T:
        with self._lock:
            self.requests_waiting -= 1
            self.requests_in_flight += 1
        try:
            return work(self.engine, cancelled)
        finally:
            with self._lock:
                self.requests_in_flight -= 1

    # --- statistics ------------------------------------------------------------------------------

    def _count_token(self) -> None:
        with self._lock:
            self.tokens_generated_total += 1
            self._recent.append((time.monotonic(), self.tokens_generated_total))

    def recent_tokens_per_second(self, window: float = 30.0) -> float:
        """Generated tokens per second over the last `window` seconds of generation."""
        with self._lock:
            now = time.monotonic()
            recent = [(t, n) for t, n in self._recent if now - t <= window]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "load_progress": round(self.load_progress, 3),
            "load_step": self.load_step,
            "error": self.error,
            "requests_in_flight": self.requests_in_flight,
            "requests_waiting": self.requests_waiting,
            "requests_total": self.requests_total,
            "tokens_generated_total": self.tokens_generated_total,
            "recent_tokens_per_second": round(self.recent_tokens_per_second(), 3),
        }
