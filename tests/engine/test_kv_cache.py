"""KV cache memory behaviour: sliding layers stay at their window, full layers grow with context."""

from __future__ import annotations

import pytest
import torch

from engine import ContextLimitError
from engine.kv_cache import FullAttentionCache, KVCache, SlidingWindowCache
from engine.presets import preset_config


def _step(cache: KVCache, tokens: int) -> None:
    positions = cache.reserve(tokens)
    for layer in cache.layers:
        k = torch.randn(1, layer.k.shape[1], tokens, layer.k.shape[3])
        layer.append(k, k.clone(), positions)
    cache.advance(tokens)


def test_sliding_layers_keep_only_the_window_and_full_layers_grow():
    config = preset_config("tiny-odd")  # window 7
    cache = KVCache(config, batch=1, dtype=torch.float32, device=torch.device("cpu"), max_context=4096)
    sliding = [c for c in cache.layers if isinstance(c, SlidingWindowCache)]
    full = [c for c in cache.layers if isinstance(c, FullAttentionCache)]
    assert len(sliding) == 2 and len(full) == 1  # layers 0 and 2 slide
    _step(cache, 5)
    sliding_bytes, full_bytes = sliding[0].nbytes(), full[0].nbytes()
    for _ in range(40):
        _step(cache, 13)
    assert cache.position == 5 + 40 * 13
    assert sliding[0].nbytes() == sliding_bytes  # constant: a ring of `window` slots
    assert full[0].nbytes() > full_bytes and full[0].length == cache.position
    # The ring holds exactly the last `window` positions.
    assert sorted(sliding[0].pos.tolist()) == list(range(cache.position - 7, cache.position))


def test_ring_returns_previous_window_then_new_chunk_in_order():
    ring = SlidingWindowCache(batch=1, kv_heads=1, head_dim=1, window=4, dtype=torch.float32,
                              device=torch.device("cpu"))
    positions = torch.arange(6)
    values = positions.float().view(1, 1, 6, 1)
    keys, _, k_pos = ring.append(values, values, positions)
    assert k_pos.tolist() == [-1, -1, -1, -1, 0, 1, 2, 3, 4, 5]
    assert keys[0, 0, 4:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    keys, _, k_pos = ring.append(torch.full((1, 1, 1, 1), 6.0), torch.zeros(1, 1, 1, 1), torch.tensor([6]))
    # slot p % 4 holds position p for the last four positions 2..5, then the new token 6
    assert k_pos.tolist() == [4, 5, 2, 3, 6]
    assert keys[0, 0, :, 0].tolist() == [4, 5, 2, 3, 6]


def test_context_limit_error_gives_both_numbers():
    cache = KVCache(preset_config("tiny"), batch=1, dtype=torch.float32, device=torch.device("cpu"),
                    max_context=10)
    _step(cache, 8)
    with pytest.raises(ContextLimitError, match=r"8 cached \+ 3 new tokens > max_context 10"):
        cache.reserve(3)


@pytest.mark.parametrize("mark", [3, 7, 12, 30])  # before, at and past the window of 7, and at a chunk's end
def test_a_ring_snapshot_taken_mid_chunk_equals_the_ring_of_a_cache_stopped_there(mark):
    config = preset_config("tiny-odd")
    torch.manual_seed(0)
    chunks = [torch.randn(1, 2, n, 24) for n in (9, 21)]  # positions 0..8 and 9..29
    marked = KVCache(config, batch=1, dtype=torch.float32, device=torch.device("cpu"), max_context=64)
    marked.marks.add(mark)
    stopped = KVCache(config, batch=1, dtype=torch.float32, device=torch.device("cpu"), max_context=64)
    for cache, limit in ((marked, 30), (stopped, mark)):
        for chunk, first in zip(chunks, (0, 9)):
            chunk = chunk[:, :, :max(0, limit - first)]
            if chunk.shape[2]:
                for layer in cache.sliding:
                    layer.append(chunk, -chunk, torch.arange(first, first + chunk.shape[2]))
    for layer, reference in zip(marked.sliding, stopped.sliding):
        snapshot = layer.snapshots[mark]
        held = reference.pos >= 0
        assert torch.equal(snapshot.k[:, :, held], reference.k[:, :, held])
        assert torch.equal(snapshot.v[:, :, held], reference.v[:, :, held])
        fresh = SlidingWindowCache(1, 2, 24, 7, torch.float32, torch.device("cpu"))
        fresh.load_snapshot(snapshot)
        assert torch.equal(fresh.pos, reference.pos)


def test_full_layers_never_grow_past_the_sequence_limit():
    cache = KVCache(preset_config("tiny"), batch=1, dtype=torch.float32, device=torch.device("cpu"), max_context=100)
    _step(cache, 70)
    _step(cache, 30)
    assert cache.full[0].k.shape[2] == 100 == cache.position
    assert cache.nbytes() <= KVCache.bytes_for(preset_config("tiny"), torch.float32, 100)
