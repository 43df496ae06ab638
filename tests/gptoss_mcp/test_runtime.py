"""EngineRunner on the tiny model: loading (held back, failed), batching, the waiting limit, progress
phases, cancellation within a step, calls between steps, and every counter back to zero."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from engine import Engine
from gptoss_mcp.runtime import Busy, EngineRunner, EngineUnavailable

LONG = {"max_tokens": 4000, "temperature": 1.0, "seed": 1}  # far longer than any test waits for


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory) -> Engine:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CACHE_DIR", str(tmp_path_factory.mktemp("gptoss-cache")))
        engine = Engine.load(tiny_dir)
        engine.harmony  # noqa: B018
    return engine


def _slowed(engine: Engine, seconds: float) -> Engine:
    """The same model, each forward pass taking at least `seconds`."""
    slow = Engine(engine.path, engine.config, engine.model, engine.options, engine.device)
    slow.__dict__.update(tokenizer=engine.tokenizer, harmony=engine.harmony)
    model_forward = engine.model.forward_sequences

    class SlowModel:
        def __getattr__(self, name):
            return getattr(engine.model, name)

        def __call__(self, *args):
            return engine.model(*args)

        def forward_sequences(self, ids, caches):
            time.sleep(seconds)
            return model_forward(ids, caches)

    slow.model = SlowModel()
    return slow


def _runner(engine, load_seconds=0.0, **kwargs) -> EngineRunner:
    def load(report):
        for i in range(5):
            time.sleep(load_seconds / 5)
            report((i + 1) / 5, f"step {i}")
        return engine

    kwargs.setdefault("max_waiting", 4)
    return EngineRunner(load, progress_interval=kwargs.pop("progress_interval", 0.05), **kwargs)


def _messages(text="Tell a story"):
    return [{"role": "user", "content": text}]


def _assert_idle(runner: EngineRunner) -> None:
    deadline = time.monotonic() + 5
    while (status := runner.status())["requests_in_flight"] or status["requests_waiting"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    assert status["active_sequences"] == 0 and status["kv_bytes"] == 0, status


def test_generation_runs_on_the_engine_thread_and_reports_progress(engine):
    runner = _runner(engine, load_seconds=0.3)
    seen, threads = [], set()

    async def on_progress(progress):
        seen.append((progress.phase, progress.load_step, progress.tokens))

    async def main():
        return await runner.generate(_messages(), {"max_tokens": 20, "temperature": 0}, on_progress)

    original = engine.model.forward_sequences
    engine.model.forward_sequences = lambda *a: (threads.add(threading.current_thread().name), original(*a))[1]
    try:
        result = anyio.run(main)
    finally:
        del engine.model.forward_sequences
    assert result.usage.completion_tokens == 20 and threads == {"gptoss-engine"}
    phases = [phase for phase, _, _ in seen]
    assert phases[0] == "loading" and "queued" in phases  # loading first, then queued as it was accepted
    assert any(step.startswith("step") for _, step, _ in seen)  # loading says what it does
    assert runner.status()["tokens_generated_total"] == 20 and runner.status()["requests_total"] == 1
    _assert_idle(runner)
    runner.close()


def test_generations_run_in_one_batch(engine):
    runner = _runner(engine)
    active = []

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(runner.generate, _messages(f"Story {i}"), {"max_tokens": 300, "temperature": 0})
            while (status := runner.status())["requests_total"] < 3 or status["requests_in_flight"] or \
                    status["requests_waiting"]:
                active.append(status["active_sequences"])
                await anyio.sleep(0.005)

    anyio.run(main)
    assert max(active) == 3
    _assert_idle(runner)
    runner.close()


def test_beyond_the_batch_requests_wait_and_beyond_the_limit_are_busy(engine):
    runner = _runner(_slowed(engine, 0.02), max_batch=1, max_waiting=1, progress_interval=5.0)
    outcomes, seen = {}, []

    async def on_progress(progress):
        seen.append((progress.phase, progress.ahead))

    async def call(name, tokens, report=None):
        try:
            result = await runner.generate(_messages(name), {"max_tokens": tokens, "temperature": 0}, report)
            outcomes[name] = result.usage.completion_tokens
        except Busy as e:
            outcomes[name] = str(e)

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", 20)
            await anyio.sleep(0.1)        # first is running
            tg.start_soon(call, "second", 5, on_progress)
            await anyio.sleep(0.1)        # second waits
            status = runner.status()
            assert status["requests_waiting"] == 1 and status["requests_in_flight"] == 1, status
            tg.start_soon(call, "third", 5)

    anyio.run(main)
    assert outcomes["first"] == 20 and outcomes["second"] == 5
    assert "busy" in outcomes["third"] and "limit 1" in outcomes["third"]
    assert seen[0] == ("queued", 1)  # told at once how many must leave the batch before it
    _assert_idle(runner)
    runner.close()


def test_cancelling_a_call_removes_it_from_the_batch_within_a_step(engine):
    runner = _runner(_slowed(engine, 0.01))
    stays = {}

    async def keep(name):
        stays[name] = await runner.generate(_messages(name), {"max_tokens": 200, "temperature": 0})

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep, "stays")
            with anyio.move_on_after(0.3):
                await runner.generate(_messages("leaves"), LONG)
            assert runner.status()["active_sequences"] == 2  # the cancelled one has not been stepped yet
            with anyio.fail_after(0.2):  # a step of the slowed model takes 0.01 s
                while runner.status()["active_sequences"] != 1:
                    await anyio.sleep(0.002)
            assert "stays" not in stays  # the other one goes on decoding
        return runner.status()["tokens_generated_total"]

    tokens = anyio.run(main)
    assert stays["stays"].usage.completion_tokens == 200
    _assert_idle(runner)
    time.sleep(0.2)
    assert runner.status()["tokens_generated_total"] == tokens < 4000  # nothing decodes any more
    runner.close()


def test_calls_run_between_steps_while_generations_decode(engine):
    runner = _runner(_slowed(engine, 0.02))

    async def main():
        await runner.wait_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.generate, _messages(), {"max_tokens": 100, "temperature": 0})
            await anyio.sleep(0.2)
            vectors = await runner.call(lambda e: e.embed(["a b"]), "embedding 1 text(s)")
            assert runner.status()["active_sequences"] == 1  # the generation was still running
            return vectors

    assert anyio.run(main).shape[0] == 1
    _assert_idle(runner)
    runner.close()


def test_a_failing_step_ends_its_requests_with_the_error_and_the_runner_goes_on(engine):
    runner = _runner(engine)

    async def main():
        await runner.wait_ready()
        scheduler = runner._scheduler

        def broken_step():
            raise RuntimeError("a bug in a step")

        scheduler.step = broken_step
        with pytest.raises(RuntimeError, match="a bug in a step"):
            await runner.generate(_messages(), {"max_tokens": 5})
        assert runner._scheduler is not scheduler  # a fresh one
        return await runner.generate(_messages(), {"max_tokens": 5})

    assert anyio.run(main).usage.completion_tokens == 5
    _assert_idle(runner)
    runner.close()


def test_progress_says_queued_then_prefilling_then_generating(engine):
    runner = _runner(_slowed(engine, 0.15), progress_interval=0.05)
    seen = []

    async def on_progress(progress):
        seen.append((progress.phase, progress.prompt_tokens))

    async def main():
        await runner.wait_ready()
        await runner.generate(_messages(), {"max_tokens": 3}, on_progress)

    anyio.run(main)
    order = {"queued": 0, "prefilling": 1, "generating": 2}
    steps = [order[phase] for phase, _ in seen]
    assert seen[0][0] == "queued" and steps == sorted(steps) and 1 in steps and 2 in steps
    assert all(tokens > 8 for phase, tokens in seen if phase == "prefilling")
    runner.close()


def test_a_short_call_reports_progress_at_once(engine):
    runner = _runner(engine, progress_interval=2.0)
    seen = []

    async def on_progress(progress):
        seen.append((progress.phase, progress.ahead))

    async def main():
        await runner.wait_ready()
        started = time.monotonic()
        result = await runner.generate(_messages(), {"max_tokens": 3}, on_progress)
        assert time.monotonic() - started < 1.0 and result.usage.completion_tokens == 3
        await runner.call(lambda e: None, "embedding 1 text(s)", on_progress)

    anyio.run(main)
    assert seen == [("queued", 0), ("queued", 0)]  # one notification per call, sent as each was accepted
    runner.close()


def test_bad_generation_params_are_value_errors_and_leave_nothing_behind(engine):
    runner = _runner(engine)

    async def main():
        with pytest.raises(ValueError, match=r"tools\[0\]\.name must be a non-empty string"):
            await runner.generate(_messages(), {"tools": [{"description": "nameless"}]})
        with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
            await runner.generate([{"role": "robot", "content": "x"}], {})

    anyio.run(main)
    _assert_idle(runner)
    runner.close()


def test_a_failed_load_is_reported_with_its_reason():
    def load(report):
        raise FileNotFoundError("/models/x/config.json: config file not found")

    runner = EngineRunner(load, max_waiting=4)

    async def main():
        with pytest.raises(EngineUnavailable, match="config file not found"):
            await runner.generate(_messages(), {})

    anyio.run(main)
    status = runner.status()
    assert status["state"] == "failed" and "config file not found" in status["error"]
    # Without an engine the status still has the prefix cache's fields, all zero.
    from engine.prefix_cache import PrefixCache

    assert status["prefix_cache"] == PrefixCache(0).stats()
    runner.close()


def test_loading_waits_for_start_loading_or_the_start_timeout(engine):
    loads = []

    def load(report):
        loads.append(time.monotonic())
        return engine

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


def test_a_call_starts_a_held_load_at_once(engine):
    runner = EngineRunner(lambda report: engine, max_waiting=4, start_timeout=30.0)

    async def main():
        with anyio.fail_after(10):
            return await runner.generate(_messages(), {"max_tokens": 2})

    assert anyio.run(main).usage.completion_tokens == 2
    runner.close()
