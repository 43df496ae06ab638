"""Scheduler: requests decoded together give what each gives alone (float32, greedy and seeded),
with staggered arrivals, chunked prefills sharing steps with decodes, a batch limit, cancellation
mid-batch and a failing request; nothing is left behind."""

from __future__ import annotations

import math

import pytest

from engine import GenerationParams
from engine.prefix_cache import PrefixCache
from engine.scheduler import Request, Scheduler

CONVERSATIONS = [  # rendered prompts of different lengths, all longer than the tiny model's window (8)
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer in French, and be very brief about it."},
     {"role": "user", "content": "Name three colours of the rainbow and a fruit of each colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a story."}],
]


def _alone(engine, messages, params) -> list[int]:
    return engine.generate(messages, params).run().completion_ids


def _run(scheduler: Scheduler, requests: list[Request], arrivals: list[int], cancel_at: dict[int, int] = {}):
    """Submits request i at step arrivals[i], cancels request i at step cancel_at[i]; steps until all are done."""
    cancelled: set[int] = set()
    for i, request in enumerate(requests):
        request.should_cancel = lambda i=i: i in cancelled
    step = 0
    while step <= max(arrivals) or not scheduler.idle:
        for i in [i for i, at in enumerate(arrivals) if at == step]:
            scheduler.submit(requests[i])
        cancelled |= {i for i, at in cancel_at.items() if at == step}
        scheduler.step()
        assert scheduler.active <= scheduler.max_batch
        step += 1
        assert step < 10_000
    assert scheduler.idle and scheduler.kv_bytes() == 0


@pytest.mark.parametrize("max_batch, step_tokens", [(8, 512), (2, 16)])
def test_greedy_requests_together_equal_each_alone(text_engine, max_batch, step_tokens):
    params = [GenerationParams(max_tokens=n, temperature=0) for n in (20, 7, 14)]
    want = [_alone(text_engine, m, p) for m, p in zip(CONVERSATIONS, params)]
    requests = [Request(m, p) for m, p in zip(CONVERSATIONS, params)]
    _run(Scheduler(text_engine, max_batch=max_batch, step_tokens=step_tokens), requests, arrivals=[0, 0, 3])
    for request, tokens in zip(requests, want):
        assert request.error is None and request.result.completion_ids == tokens
        assert request.result.usage.prompt_tokens == request.prompt_tokens > 8


def test_seeded_sampling_is_per_request(text_engine):
    params = [GenerationParams(max_tokens=12, temperature=1.0, seed=s) for s in (1, 2, 1)]
    want = [_alone(text_engine, CONVERSATIONS[0], p) for p in params]
    requests = [Request(CONVERSATIONS[0], p) for p in params]
    _run(Scheduler(text_engine), requests, arrivals=[0, 1, 2])
    assert [r.result.completion_ids for r in requests] == want and want[0] == want[2]


def test_a_cancelled_request_leaves_and_the_others_go_on(text_engine):
    params = GenerationParams(max_tokens=16, temperature=0)
    want = [_alone(text_engine, m, params) for m in CONVERSATIONS]
    steps = {i: [] for i in range(3)}
    requests = [Request(m, params, on_step=lambda s, i=i: steps[i].append(s.token)) for i, m in enumerate(CONVERSATIONS)]
    _run(Scheduler(text_engine, max_batch=2), requests, arrivals=[0, 0, 0], cancel_at={1: 4, 2: 0})
    assert requests[0].result.completion_ids == want[0] and requests[0].result.finish_reason == "length"
    assert requests[1].result.finish_reason == "cancelled" and 0 < len(requests[1].result.completion_ids) < 16
    assert requests[1].result.completion_ids == want[1][:len(requests[1].result.completion_ids)]
    assert requests[2].result.finish_reason == "cancelled" and requests[2].result.completion_ids == []  # while waiting
    assert steps[0] == want[0] and steps[1] == requests[1].result.completion_ids  # each step reported once


def test_a_failing_request_ends_with_its_error_and_the_others_go_on(text_engine):
    params = GenerationParams(max_tokens=10, temperature=0)
    want = _alone(text_engine, CONVERSATIONS[0], params)

    def explode(step):
        raise RuntimeError("the client went away")

    requests = [Request(CONVERSATIONS[0], params), Request(CONVERSATIONS[1], params, on_step=explode)]
    _run(Scheduler(text_engine), requests, arrivals=[0, 0])
    assert requests[0].result.completion_ids == want
    assert requests[1].result is None and "went away" in str(requests[1].error)


def test_submit_rejects_what_cannot_run(text_engine):
    scheduler = Scheduler(text_engine)
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        scheduler.submit(Request([{"role": "robot", "content": "x"}], GenerationParams()))
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        Scheduler(text_engine, max_batch=0)
    assert scheduler.idle


def test_a_prompt_arriving_while_another_decodes_runs_in_small_chunks(text_engine, monkeypatch):
    monkeypatch.setattr(text_engine, "prefix_cache", PrefixCache(0))  # every prompt token is computed
    steps: dict[str, list[int]] = {"a": [], "b": []}
    step = 0
    requests = {name: Request(CONVERSATIONS[i], GenerationParams(max_tokens=40, temperature=0),
                              on_step=lambda s, name=name: steps[name].append(step))
                for name, i in (("a", 0), ("b", 1))}
    scheduler = Scheduler(text_engine, step_tokens=512, decoding_step_tokens=8)
    scheduler.submit(requests["a"])
    scheduler.step()  # a's whole prompt in one chunk: nothing else was decoding
    assert steps["a"] == [0]
    scheduler.submit(requests["b"])
    while not requests["b"].done:
        step += 1
        scheduler.step()
    # b joins at step 1 beside a's decoding: 7 of the 8 tokens of each step are b's prompt.
    assert steps["b"][0] == 1 + math.ceil(requests["b"].prompt_tokens / 7) - 1
    assert len(steps["a"]) > steps["b"][0]  # a decoded a token at every one of those steps
    assert steps["a"][:steps["b"][0] + 1] == list(range(steps["b"][0] + 1))
