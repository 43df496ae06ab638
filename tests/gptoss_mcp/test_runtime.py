"""EngineRunner with a stand-in engine: queueing, busy limit, cancellation, failed loads, statistics."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from engine import GenerationResult, GenerationStep, Usage
from gptoss_mcp.runtime import Busy, EngineRunner, EngineUnavailable


class FakeGeneration:
    def __init__(self, tokens: int, delay: float, should_cancel, prefill_seconds: float = 0.0):
        self._tokens, self._delay, self._should_cancel = tokens, delay, should_cancel
        self._prefill_seconds = prefill_seconds
        self.prompt_tokens, self.result = 1, None

    def __iter__(self):
        time.sleep(self._prefill_seconds)
        produced, finish = 0, "length"
        while produced < self._tokens:
            if self._should_cancel():
                finish = "cancelled"
                break
            time.sleep(self._delay)
            yield GenerationStep(produced, "x", "final")
            produced += 1
        self.result = GenerationResult("x" * produced, "", [], finish, Usage(1, produced))


class FakeEngine:
    def __init__(self, delay: float = 0.01, prefill_seconds: float = 0.0):
        self.delay, self.prefill_seconds, self.thread_names, self.finished = delay, prefill_seconds, set(), []

    def generate(self, messages, params, should_cancel):
        self.thread_names.add(threading.current_thread().name)
        generation = FakeGeneration(params.max_tokens, self.delay, should_cancel, self.prefill_seconds)
        self.finished.append(generation)
        return generation


def _runner(engine=None, load_seconds=0.0, max_waiting=4, error=None) -> EngineRunner:
    def load(report):
        for i in range(5):
            time.sleep(load_seconds / 5)
            report((i + 1) / 5)
        if error:
            raise error
        return engine or FakeEngine()

    return EngineRunner(load, max_waiting=max_waiting, progress_interval=0.05)


def test_generation_runs_on_the_engine_thread_and_reports_progress():
    engine = FakeEngine()
    runner = _runner(engine, load_seconds=0.3)
    seen = []

    async def on_progress(progress):
        seen.append((progress.phase, progress.tokens))

    async def main():
        return await runner.generate([], {"max_tokens": 20}, on_progress)

    result = anyio.run(main)
    assert result.usage.completion_tokens == 20 and engine.thread_names == {"gptoss-engine_0"}
    assert seen[0][0] == "loading" and seen[-1][0] == "generating"
    assert runner.status()["tokens_generated_total"] == 20 and runner.status()["requests_total"] == 1
    runner.close()


def test_requests_queue_in_order_and_a_full_queue_is_busy():
    engine = FakeEngine(delay=0.02)
    runner = _runner(engine, max_waiting=1)
    outcomes = {}

    async def call(name, tokens):
        try:
            outcomes[name] = (await runner.generate([], {"max_tokens": tokens})).usage.completion_tokens
        except Busy as e:
            outcomes[name] = str(e)

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", 20)
            await anyio.sleep(0.1)        # first is running
            tg.start_soon(call, "second", 5)
            await anyio.sleep(0.1)        # second waits
            assert runner.status()["requests_waiting"] == 1 and runner.status()["requests_in_flight"] == 1
            tg.start_soon(call, "third", 5)

    anyio.run(main)
    assert outcomes["first"] == 20 and outcomes["second"] == 5
    assert "busy" in outcomes["third"] and "limit 1" in outcomes["third"]
    runner.close()


def test_cancelling_a_call_stops_its_generation_within_a_token():
    engine = FakeEngine(delay=0.02)
    runner = _runner(engine)

    async def main():
        with anyio.move_on_after(0.3):
            await runner.generate([], {"max_tokens": 10_000})
        deadline = time.monotonic() + 1
        while runner.status()["requests_in_flight"] and time.monotonic() < deadline:
            await anyio.sleep(0.01)

    anyio.run(main)
    generation = engine.finished[0]
    assert generation.result.finish_reason == "cancelled" and generation.result.usage.completion_tokens < 100
    assert runner.status()["requests_in_flight"] == 0 and runner.status()["requests_waiting"] == 0
    runner.close()


def test_a_failed_load_is_reported_with_its_reason():
    runner = _runner(error=FileNotFoundError("/models/x/config.json: config file not found"))

    async def main():
        with pytest.raises(EngineUnavailable, match="config file not found"):
            await runner.generate([], {})

    anyio.run(main)
    status = runner.status()
    assert status["state"] == "failed" and "config file not found" in status["error"]
    runner.close()


def _phases_and_ahead():
    """(what a progress callback saw, the callback)"""
    seen = []

    async def on_progress(progress):
        seen.append((progress.phase, progress.ahead))

    return seen, on_progress


def test_a_call_reports_progress_at_once_even_when_it_ends_within_one_interval():
    runner = EngineRunner(lambda report: FakeEngine(delay=0.001), max_waiting=4, progress_interval=2.0)
    seen, on_progress = _phases_and_ahead()

    async def main():
        await runner.wait_ready()
        started = time.monotonic()
        result = await runner.generate([], {"max_tokens": 3}, on_progress)
        assert time.monotonic() - started < 1.0 and result.usage.completion_tokens == 3
        await runner.call(lambda engine: None, "embedding 1 text(s)", on_progress)

    anyio.run(main)
    assert seen == [("queued", 0), ("queued", 0)]  # one notification per call, sent as each was accepted
    runner.close()


def test_a_queued_call_says_how_many_requests_are_ahead():
    runner = EngineRunner(lambda report: FakeEngine(delay=0.02), max_waiting=4, progress_interval=5.0)
    seen, on_progress = _phases_and_ahead()

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.generate, [], {"max_tokens": 10})
            await anyio.sleep(0.05)  # the first one is running
            await runner.generate([], {"max_tokens": 1}, on_progress)

    anyio.run(main)
    assert seen[0] == ("queued", 1)
    runner.close()


def test_loading_waits_for_start_loading_or_the_start_timeout():
    loads = []

    def load(report):
        loads.append(time.monotonic())
        return FakeEngine()

    held = EngineRunner(load, max_waiting=4, start_timeout=30.0)
    time.sleep(0.3)
    assert loads == [] and held.status()["state"] == "loading"
    asked = time.monotonic()
    held.start_loading(after=0.2)
    held.start_loading(after=0.2)  # one timer, not two
    deadline = time.monotonic() + 5
    while held.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held.state == "ready" and len(loads) == 1 and loads[0] - asked >= 0.2
    held.close()

    timed_out = EngineRunner(load, max_waiting=4, start_timeout=0.2)
    deadline = time.monotonic() + 5
    while timed_out.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert timed_out.state == "ready" and len(loads) == 2
    timed_out.close()


def test_a_call_starts_a_held_load_at_once():
    runner = EngineRunner(lambda report: FakeEngine(), max_waiting=4, start_timeout=30.0)

    async def main():
        with anyio.fail_after(5):
            return await runner.generate([], {"max_tokens": 2})

    assert anyio.run(main).usage.completion_tokens == 2
    runner.close()


def test_bad_generation_params_are_value_errors_from_the_engine_thread():
    runner = _runner()

    async def main():
        with pytest.raises(ValueError, match=r"tools\[0\]\.name must be a non-empty string"):
            await runner.generate([], {"tools": [{"description": "nameless"}]})

    anyio.run(main)
    assert runner.status()["requests_in_flight"] == 0 and runner.status()["requests_waiting"] == 0
    runner.close()


def test_progress_says_when_the_prompt_is_being_prefilled():
    engine = FakeEngine(prefill_seconds=0.3)
    runner = _runner(engine)
    seen = []

    async def on_progress(progress):
        seen.append((progress.phase, progress.prompt_tokens, progress.tokens))

    async def main():
        await runner.wait_ready()
        await runner.generate([], {"max_tokens": 3}, on_progress)

    anyio.run(main)
    order = {"queued": 0, "prefilling": 1, "generating": 2}
    steps = [order[phase] for phase, *_ in seen]
    assert seen[0][0] == "queued" and ("prefilling", 1, 0) in seen and steps == sorted(steps)
    runner.close()
