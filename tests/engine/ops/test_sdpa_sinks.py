"""reference.sdpa_sinks against a float64 loop over (batch, query, head) written from the spec:
grouped-query attention, causal + sliding-window + empty-slot masking by absolute positions, and a
per-head sink logit that joins the softmax denominator without a value."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import U32

DH = 24  # not a power of two


def naive_sdpa(q, k, v, sinks, sm_scale, window, q_pos, k_pos):
    """float64 output [B, T, H, Dh] and the error bound of a float32 evaluation of the same formula.

    Bound per output element, derived from the float32 steps: a score q·k of Dh products is off by
    ≤ (Dh + 1)·u·sm_scale·Σ|q||k| plus one rounding for sm_scale and one for subtracting the max
    (≤ u·(|s| + |m|)); score errors Δ move each softmax weight by a factor within exp(±2·max Δ); the
    exps (≤ 2u), the (S + 1)-term denominator (≤ (S + 1)·u) and the division (u) add
    (S + 4)·u relatively; the weighted sum of S values adds S·u. So
    |err| ≤ Σ_j w_j·|v_j| · (2·max Δ + (2·S + 4)·u), to first order.
    """
    q, k, v, sinks = q.double(), k.double(), v.double(), sinks.double()
    B, T, H, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    out = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    bound = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    qp, kp = q_pos.tolist(), k_pos.tolist()
    for t in range(T):
        visible = [j for j in range(S)
                   if kp[j] >= 0 and kp[j] <= qp[t] and (window <= 0 or qp[t] - kp[j] < window)]
        if not visible:
            continue  # only the sink is left: it has no value, so the output is 0
        for b in range(B):
            for h in range(H):
                keys, values = k[b, h // G, visible], v[b, h // G, visible]
                scores = sm_scale * (keys @ q[b, t, h])
                m = max(sinks[h].item(), scores.max().item())
                e = torch.exp(scores - m)
                w = e / (math.exp(sinks[h].item() - m) + e.sum())
                out[b, t, h] = w @ values
                delta = (Dh + 1) * U32 * sm_scale * (keys.abs() @ q[b, t, h].abs()) \
                    + U32 * (scores.abs() + abs(m) + sinks[h].abs())
                rel = 2 * delta.max() + (2 * S + 4) * U32
                bound[b, t, h] = (w @ values.abs()) * rel
    return out, bound


def assert_close_to_naive(got, want, bound):
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isfinite(got).all()
    err = (got.double() - want).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound.clamp_min(1e-300)).max().item():.3g}"


def make_case(B, T, H, K, prefix, empty, seed, sinks=None):
    """A cache of `prefix` earlier keys, the T new ones and `empty` slots at -1, in shuffled slot order.

    Queries sit at positions prefix .. prefix + T - 1. Heads' sinks mix ordinary values, a large
    one (+8: the sink takes almost all the weight) and a very negative one (the sink is negligible).
    """
    g = torch.Generator().manual_seed(seed)
    S = prefix + T + empty
    q = torch.randn(B, T, H, DH, generator=g)
    k = torch.randn(B, K, S, DH, generator=g)
    v = torch.randn(B, K, S, DH, generator=g)
    if sinks is None:
        sinks = torch.randn(H, generator=g)
        sinks[0] = 8.0
        sinks[-1] = -30.0
    k_pos = torch.cat((torch.arange(prefix + T), torch.full((empty,), -1)))[torch.randperm(S, generator=g)]
    q_pos = torch.arange(prefix, prefix + T)
    return q, k, v, sinks, q_pos, k_pos


@pytest.mark.parametrize("G", [1, 3, 8])
@pytest.mark.parametrize("window", [0, 7, 128])
@pytest.mark.parametrize("T", [1, 5, 37])
@pytest.mark.parametrize("B", [1, 2])
def test_matches_naive(B, T, window, G):
    K = 2
    q, k, v, sinks, q_pos, k_pos = make_case(B, T, G * K, K, prefix=9, empty=4, seed=100 * B + 10 * T + G)
    sm_scale = 1 / math.sqrt(DH)
    got = reference.sdpa_sinks(q, k, v, sinks, sm_scale, window, q_pos, k_pos)
    assert_close_to_naive(got, *naive_sdpa(q, k, v, sinks, sm_scale, window, q_pos, k_pos))


@pytest.mark.parametrize("window", [0, 7, 40])
def test_decode_step_over_ring_buffer(window):
    # One new token at position 70 against a 40-slot ring buffer: slot p % 40 holds position p for
    # the latest 40 positions, so keys arrive rotated, not sorted.
    B, H, K, S, now = 2, 6, 2, 40, 70
    g = torch.Generator().manual_seed(window)
    q = torch.randn(B, 1, H, DH, generator=g)
    k = torch.randn(B, K, S, DH, generator=g)
    v = torch.randn(B, K, S, DH, generator=g)
    sinks = torch.tensor([8.0, -30.0, 0.5, -1.0, 2.0, 0.0])
    k_pos = torch.empty(S, dtype=torch.int64)
    for p in range(now - S + 1, now + 1):
        k_pos[p % S] = p
    q_pos = torch.tensor([now])
    got = reference.sdpa_sinks(q, k, v, sinks, 0.2, window, q_pos, k_pos)
    assert_close_to_naive(got, *naive_sdpa(q, k, v, sinks, 0.2, window, q_pos, k_pos))


def test_early_decode_with_empty_slots():
    # Position 12 of a 40-slot buffer: 27 slots still empty (-1), scattered.
    B, H, K, S = 1, 8, 1, 40
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(B, 1, H, DH, generator=g), torch.randn(B, K, S, DH, generator=g), \
        torch.randn(B, K, S, DH, generator=g)
    k_pos = torch.cat((torch.arange(13), torch.full((27,), -1)))[torch.randperm(S, generator=g)]
    sinks = torch.linspace(-20, 8, H)
    for window in (0, 5):
        got = reference.sdpa_sinks(q, k, v, sinks, 0.3, window, torch.tensor([12]), k_pos)
        assert_close_to_naive(got, *naive_sdpa(q, k, v, sinks, 0.3, window, torch.tensor([12]), k_pos))


def test_window_counts_the_current_token():
    # With identical keys every visible key gets the same weight, so with v_j = e_j (one-hot per
    # slot) the output shows exactly which keys are visible: window w sees positions p-w+1 .. p.
    S, window = 12, 4
    q = torch.zeros(1, 1, 1, S)
    k = torch.zeros(1, 1, S, S)
    v = torch.eye(S)[None, None]
    k_pos = torch.arange(S)
    out = reference.sdpa_sinks(q, k, v, torch.tensor([0.0]), 1.0, window, torch.tensor([9]), k_pos)
    seen = (out[0, 0, 0] > 0).nonzero().flatten().tolist()
    assert seen == [6, 7, 8, 9]
    # Scores are all 0 and the sink logit is 0: each of the 4 keys gets exactly 1/5.
    assert torch.allclose(out[0, 0, 0, 6:10], torch.full((4,), 0.2), rtol=8 * U32, atol=0)


def test_sink_is_not_scaled_by_sm_scale():
    # One visible key with score sm_scale·(q·k) = 0.5·2 = 1 and sink 1: the key's weight is
    # e/(e + e) = 1/2 only if the sink is taken raw (scaled, it would be e/(e + e^0.5)).
    q = torch.tensor([[[[2.0]]]])
    k = torch.tensor([[[[1.0]]]])
    v = torch.tensor([[[[1.0]]]])
    out = reference.sdpa_sinks(q, k, v, torch.tensor([1.0]), 0.5, 0, torch.tensor([0]), torch.tensor([0]))
    assert out.item() == pytest.approx(0.5, rel=4 * U32)


def test_fully_masked_rows_give_zero():
    B, T, H, K, S = 2, 4, 6, 3, 9
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, T, H, DH, generator=g)
    k, v = torch.randn(B, K, S, DH, generator=g), torch.randn(B, K, S, DH, generator=g)
    sinks = torch.tensor([8.0, -30.0, 0.0, -1e4, 1.0, 3.0])
    # Query 0 (position 2) precedes every key; query 1's only candidate is outside window 1
    # (its own position 6 is not cached); queries 2, 3 see keys.
    k_pos = torch.tensor([7, -1, 5, 9, 3, -1, 8, 4, 10])
    q_pos = torch.tensor([2, 6, 7, 10])
    for window in (0, 1):
        got = reference.sdpa_sinks(q, k, v, sinks, 0.25, window, q_pos, k_pos)
        assert not torch.isnan(got).any()
        if window == 1:
            assert torch.equal(got[:, :2], torch.zeros(B, 2, H, DH))
        assert torch.equal(got[:, 0], torch.zeros(B, H, DH))
        assert_close_to_naive(got, *naive_sdpa(q, k, v, sinks, 0.25, window, q_pos, k_pos))
    # Every slot empty: all zeros.
    got = reference.sdpa_sinks(q, k, v, sinks, 0.25, 0, q_pos, torch.full((S,), -1))
    assert torch.equal(got, torch.zeros(B, T, H, DH))


def test_sink_takes_weight_without_value():
    # v = 1 everywhere: the output is Σ_visible w_j = 1 − p_sink < 1, the same in every component.
    B, T, H, K = 1, 9, 4, 2
    q, k, _, _, q_pos, k_pos = make_case(B, T, H, K, prefix=3, empty=2, seed=4)
    v = torch.ones(B, K, k.shape[2], DH)
    sinks = torch.tensor([-3.0, 0.0, 1.0, 4.0])
    got = reference.sdpa_sinks(q, k, v, sinks, 1 / math.sqrt(DH), 5, q_pos, k_pos)
    assert ((got > 0) & (got < 1)).all()
    assert_close_to_naive(got, *naive_sdpa(q, k, v, sinks, 1 / math.sqrt(DH), 5, q_pos, k_pos))


@pytest.mark.parametrize("tile_rows", [1, 7, 1000])
def test_query_tiling(monkeypatch, tile_rows):
    # The op splits the queries into tiles of max(1, _SCORE_TILE_ELEMENTS // (B·H·S)) rows; force
    # 1-row tiles, 7-row tiles (T = 100 leaves a partial last tile) and a single tile.
    B, T, H, K = 1, 100, 6, 2
    # A seed per case: rows a buggy op forgot to write could otherwise hold a freed, same-sized
    # correct result from the previous case.
    q, k, v, sinks, q_pos, k_pos = make_case(B, T, H, K, prefix=20, empty=3, seed=5 + tile_rows)
    S = k.shape[2]
    args = (q, k, v, sinks, 1 / math.sqrt(DH), 16, q_pos, k_pos)
    with monkeypatch.context() as patch:
        patch.setattr(reference, "_SCORE_TILE_ELEMENTS", tile_rows * B * H * S)
        tiled = reference.sdpa_sinks(*args)  # first: no earlier same-sized result to reuse memory from
    untiled = reference.sdpa_sinks(*args)
    want, bound = naive_sdpa(*args)
    assert_close_to_naive(tiled, want, bound)
    assert_close_to_naive(untiled, want, bound)
    # The same float32 operations run row by row either way, up to matmul blocking.
    assert ((tiled.double() - untiled.double()).abs() <= 2 * bound).all()
