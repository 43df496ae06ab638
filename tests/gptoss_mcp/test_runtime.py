"""EngineRunner with a stand-in engine: queueing, busy limit, cancellation, failed loads, statistics."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from engine import GenerationParams, GenerationResult, GenerationStep, Usage
from gptoss_mcp.runtime import Busy, EngineRunner, EngineUnavailable


class FakeGeneration:
    def __init__(self, tokens: int, delay: float, should_cancel):
        self._tokens, self._delay, self._should_cancel = tokens, delay, should_cancel
        self.result = None

    def __iter__(self):
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
    def __init__(self, delay: float = 0.01):
        self.delay, self.thread_names, self.finished = delay, set(), []

    def generate(self, messages, params, should_cancel):
        self.thread_names.add(threading.current_thread().name)
        generation = FakeGeneration(params.max_tokens, self.delay, should_cancel)
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
        return await runner.generate([], GenerationParams(max_tokens=20), on_progress)

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
            outcomes[name] = (await runner.generate([], GenerationParams(max_tokens=tokens))).usage.completion_tokens
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
            await runner.generate([], GenerationParams(max_tokens=10_000))
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
            await runner.generate([], GenerationParams())

    anyio.run(main)
    status = runner.status()
    assert status["state"] == "failed" and "config file not found" in status["error"]
    runner.close()
