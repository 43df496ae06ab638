"""Prefix cache and KV budget: a request resumed from a cached prefix gets the logits and tokens of
a cold prefill (float32), across the sliding window and after the previous turn's reasoning was
dropped; clients share a prefix; eviction keeps the budget; requests wait for or are refused KV
memory with the numbers; nothing is left reserved."""

from __future__ import annotations

import pytest
import torch

from engine import GenerationParams, KVMemoryError
from engine.kv_cache import KVCache
from engine.prefix_cache import PrefixCache
from engine.scheduler import Request, Scheduler

from tests.engine.test_model import TOLERANCE

SYSTEM = {"role": "system", "content": "You are a terse assistant for a geography quiz."}
TURN_1 = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
# The reply as the host sends it back: harmony drops its reasoning from the next prompt.
TURN_2 = TURN_1 + [{"role": "assistant", "content": "Paris.", "reasoning": "Easy: it is Paris."},
                   {"role": "user", "content": "And of Italy?"}]
GREEDY = GenerationParams(max_tokens=12, temperature=0)


@pytest.fixture
def engine(text_engine, monkeypatch):
    """The session's tiny float32 engine with a fresh prefix cache (restored afterwards)."""
    monkeypatch.setattr(text_engine, "prefix_cache", PrefixCache(64 << 20))
    return text_engine


def _prompt(engine, messages) -> list[int]:
    return engine.prompt_for(messages, GREEDY)[0]


def _cold(engine, messages, monkeypatch, params=GREEDY):
    with monkeypatch.context() as m:
        m.setattr(engine, "prefix_cache", PrefixCache(0))
        return engine.generate(messages, params).run()


def _resumed_logits(engine, prompt: list[int]) -> tuple[int, torch.Tensor]:
    hit = engine.prefix_cache.lookup(prompt, sliding=True)
    cache = engine.new_cache()
    engine.prefix_cache.restore(hit, cache)
    rest = torch.tensor(prompt[hit.position:]).view(1, -1)
    return hit.position, engine.model.unembed(engine.forward(rest, cache))[0, -1]


def test_the_next_turn_resumes_where_the_previous_prompt_ended(engine, monkeypatch):
    first = engine.generate(TURN_1, GREEDY).run()
    assert first.usage.cached_tokens == 0 and engine.prefix_cache.entries == 1
    prompt_1, prompt_2 = _prompt(engine, TURN_1), _prompt(engine, TURN_2)
    assert prompt_2[:len(prompt_1)] == prompt_1 and len(prompt_1) > 8  # longer than the window
    position, logits = _resumed_logits(engine, prompt_2)
    assert position == len(prompt_1)  # everything before the dropped reasoning
    cold = engine.logits(prompt_2)[-1]
    assert (logits - cold).abs().max().item() <= TOLERANCE["tiny"]

    second = engine.generate(TURN_2, GREEDY).run()
    assert second.usage.cached_tokens == len(prompt_1)
    assert second.completion_ids == _cold(engine, TURN_2, monkeypatch).completion_ids
    stats = engine.prefix_cache.stats()
    assert stats["hit_tokens_total"] == len(prompt_1)  # the second request's
    assert stats["prompt_tokens_total"] == len(prompt_1) + len(prompt_2)  # the two requests that looked
    assert stats["hit_rate"] == round(len(prompt_1) / (len(prompt_1) + len(prompt_2)), 4)


def test_turns_share_their_common_keys_and_a_third_turn_resumes_across_segments(engine, monkeypatch):
    engine.generate(TURN_1, GREEDY).run()
    engine.generate(TURN_2, GREEDY).run()
    both = engine.prefix_cache
    assert both.entries == 2  # turn 1's entry holds its reply's reasoning, which turn 2 dropped
    turn_3 = TURN_2 + [{"role": "assistant", "content": "Rome."}, {"role": "user", "content": "And Spain's?"}]
    prompt_2, prompt_3 = _prompt(engine, TURN_2), _prompt(engine, turn_3)
    assert prompt_3[:len(prompt_2)] == prompt_2
    position, logits = _resumed_logits(engine, prompt_3)  # from turn 2's entry: two segments
    assert position == len(prompt_2)
    assert (logits - engine.logits(prompt_3)[-1]).abs().max().item() <= TOLERANCE["tiny"]
    alone = []
    for messages in (TURN_1, TURN_2):  # each turn's entry made cold, in a cache of its own
        monkeypatch.setattr(engine, "prefix_cache", PrefixCache(64 << 20))
        engine.generate(messages, GREEDY).run()
        alone.append(engine.prefix_cache.bytes)
    # Turn 2's entry shares turn 1's keys of the first prompt instead of holding a copy.
    assert max(alone) <= both.bytes < sum(alone)


def test_the_same_prompt_again_runs_only_its_last_token(engine, monkeypatch):
    sampled = GenerationParams(max_tokens=10, temperature=1.0, seed=5)
    first = engine.generate(TURN_1, sampled).run()
    again = engine.generate(TURN_1, sampled).run()
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1
    assert again.completion_ids == first.completion_ids == _cold(engine, TURN_1, monkeypatch, sampled).completion_ids


def test_clients_share_one_prefix_while_decoding_together(engine, monkeypatch):
    engine.generate(TURN_1, GREEDY).run()
    questions = [[SYSTEM, {"role": "user", "content": q}] for q in ("Capital of Peru?", "And Chile's?")]
    want = [_cold(engine, m, monkeypatch).completion_ids for m in questions]
    requests = [Request(m, GREEDY) for m in questions]
    scheduler = Scheduler(engine)
    for request in requests:
        scheduler.submit(request)
    while not scheduler.idle:
        scheduler.step()
    shared = requests[0].result.usage.cached_tokens
    assert 0 < shared < requests[0].prompt_tokens  # up to the end of the shared system messages
    assert requests[1].result.usage.cached_tokens == shared
    assert [r.result.completion_ids for r in requests] == want
    assert scheduler.reserved_bytes == 0 and scheduler.kv_bytes() == 0


def test_a_cancelled_request_leaves_its_prefix_behind(engine):
    calls = iter(range(1000))
    request = Request(TURN_2, GREEDY, should_cancel=lambda: next(calls) >= 3)
    scheduler = Scheduler(engine)
    scheduler.submit(request)
    while not scheduler.idle:
        scheduler.step()
    assert request.result.finish_reason == "cancelled"
    assert engine.prefix_cache.lookup(_prompt(engine, TURN_1), sliding=True) is not None


def test_eviction_keeps_the_budget_least_recently_used_first(engine):
    other = [{"role": "user", "content": "Something else entirely, and no system message this time."}]
    engine.prefix_cache = PrefixCache(64 << 20)
    for messages in (TURN_1, other):
        engine.generate(messages, GREEDY).run()
    both = engine.prefix_cache.bytes
    engine.prefix_cache = cache = PrefixCache(both - 1)  # one byte short of keeping both
    engine.generate(TURN_1, GREEDY).run()
    engine.generate(other, GREEDY).run()
    assert cache.entries == 1 and 0 < cache.bytes <= cache.budget_bytes
    # The older one went: TURN_1 now resumes only where it agrees with the other (harmony's system message).
    prompt_1, prompt_other = _prompt(engine, TURN_1), _prompt(engine, other)
    shared = next(i for i, (a, b) in enumerate(zip(prompt_1, prompt_other)) if a != b)
    assert cache.lookup(prompt_1, sliding=True).position <= shared < len(prompt_1) - 1
    assert cache.lookup(prompt_other, sliding=True).position == len(prompt_other) - 1


def test_a_disabled_prefix_cache_keeps_nothing(text_engine, monkeypatch):
    monkeypatch.setattr(text_engine, "prefix_cache", PrefixCache(0))
    text_engine.generate(TURN_1, GREEDY).run()
    again = text_engine.generate(TURN_1, GREEDY).run()
    stats = text_engine.prefix_cache.stats()
    assert again.usage.cached_tokens == 0 and (stats["entries"], stats["bytes"], stats["hit_tokens_total"]) == (0, 0, 0)


def test_kv_budget_refuses_what_never_fits_and_queues_what_fits_later(engine, monkeypatch):
    need = KVCache.bytes_for(engine.config, engine.model.dtype, len(_prompt(engine, TURN_1)) + 12,
                             snapshots=8)
    monkeypatch.setattr(engine, "kv_budget_bytes", need + need // 2)  # one request at a time
    with pytest.raises(KVMemoryError, match=r"MiB of KV cache \(\d+ prompt tokens \+ 4096 reply tokens\) "
                                            r"but the KV budget is [\d.]+ MiB"):
        Scheduler(engine).submit(Request(TURN_1, GenerationParams(max_tokens=4096)))
    want = _cold(engine, TURN_1, monkeypatch).completion_ids
    scheduler = Scheduler(engine)
    requests = [Request(TURN_1, GREEDY) for _ in range(2)]
    for request in requests:
        scheduler.submit(request)
    queued_for_memory = 0
    while not scheduler.idle:
        scheduler.step()
        assert scheduler.active <= 1 and scheduler.reserved_bytes <= engine.kv_budget_bytes
        assert scheduler.kv_bytes() <= scheduler.reserved_bytes
        queued_for_memory += scheduler.active == scheduler.waiting == 1
    assert queued_for_memory >= GREEDY.max_tokens - 1  # the second waited while the first decoded
    assert [r.result.completion_ids for r in requests] == [want, want]
    assert scheduler.reserved_bytes == 0
