"""C++ sdpa_sinks against a float64 evaluation of the spec and against reference.sdpa_sinks: grouped
heads, causal + sliding-window + empty-slot masking by key positions in ring-buffer order, sinks that
take almost all or almost none of the weight, fully masked rows, bfloat16/float32 caches, cache
slices read in place; opcheck; errors name the tensor."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import U32

KEY_TILE = 64  # keys per tile of the C++ kernel (csrc/cpu/sdpa_sinks.cpp, kKeyTile): see exact_sdpa


def exact_sdpa(q, k, v, sinks, sm_scale, window, q_pos, k_pos):
    """float64 output [B, T, H, Dh] of the spec (on the exact upcasts of q, k, v) and an error bound
    for the kernel's float32 evaluation, per element, relative to Σ_j w_j·|v_j|.

    Derivation (u = 2^-24), following tests/engine/ops/test_sdpa_sinks.py::naive_sdpa with the
    kernel's extra steps:
    - score s_j = fl(fl(q·k_j)·sm_scale): the Dh-term dot product in 8 lanes plus a 3-level tree
      (and a scalar tail) is off by ≤ Dh·u·Σ|q||k| (any order of a Dh-term sum is within (Dh−1)·u),
      the scaling adds u·|s_j|.
    - the online softmax exponentiates s_j − m_t with m_t the running max when key j's tile is seen
      (sink ≤ m_t ≤ m, so |m_t| ≤ |m| + |sink|): one rounding u·(|s_j| + |m| + |sink|); the rescaling
      factors exp(m_t − m_t') round their arguments by u·|m_t − m_t'|, which telescopes to
      ≤ u·(|m| + |sink|) over the row. Together Δ_j ≤ (Dh + 2)·u·sm_scale·Σ|q||k| + 3u·(|s_j| + |m| +
      |sink|), and score errors move each weight by a factor within exp(±2·max Δ).
    - exp is within 1.41u relatively (measured exhaustively, see exp_ps; ≤ 2u as in naive_sdpa), the
      (S + 1)-term denominator and the S-term weighted sum add (2S + 1)·u, the final division u:
      (2S + 4)·u as in naive_sdpa. Each key tile can raise the running max once; each such rescale
      multiplies the accumulated terms by a factor with ≤ 2u (exp) + u (product) error: 4u per tile
      with slack. Plus 4u slack.
    So |err| ≤ Σ_j w_j·|v_j| · (2·max_j Δ_j + (2S + 8 + 4·⌈S / KEY_TILE⌉)·u). A row with no visible
    key has bound 0: its output must be exactly 0.
    """
    B, T, H, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    qd = q.double().reshape(B, T, K, G, Dh)
    kd, vd = k.double(), v.double()
    scores = torch.einsum("btkgd,bksd->bkgts", qd, kd) * sm_scale  # [B, K, G, T, S]
    absdot = torch.einsum("btkgd,bksd->bkgts", qd.abs(), kd.abs()) * sm_scale
    qp, kp = q_pos[:, None], k_pos[None, :]
    visible = (kp >= 0) & (kp <= qp)
    if window > 0:
        visible &= qp - kp < window
    sink = sinks.double().reshape(1, K, G, 1)
    m = torch.maximum(sink, scores.masked_fill(~visible, -math.inf).amax(-1))  # [B, K, G, T]
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    e = torch.where(visible, torch.exp(scores - m_safe[..., None]), 0.0)
    den = torch.exp(sink - m_safe) + e.sum(-1)
    w = torch.where(den[..., None] > 0, e / den[..., None], 0.0)
    out = w @ vd.unsqueeze(2)  # [B, K, G, T, Dh]
    sink_mag = torch.where(torch.isfinite(sink), sink.abs(), 0.0)
    delta = (Dh + 2) * U32 * absdot + 3 * U32 * (scores.abs() + m_safe.abs()[..., None] + sink_mag[..., None])
    delta = torch.where(visible, delta, 0.0).amax(-1)  # [B, K, G, T]
    rel = 2 * delta + (2 * S + 8 + 4 * math.ceil(S / KEY_TILE)) * U32
    bound = (w @ vd.abs().unsqueeze(2)) * rel[..., None]

    def layout(x):  # [B, K, G, T, Dh] -> [B, T, H, Dh]
        return x.permute(0, 3, 1, 2, 4).reshape(B, T, H, Dh)

    return layout(out), layout(bound)


def check(extension, q, k, v, sinks, sm_scale, window, q_pos, k_pos):
    """The kernel within its bound of the float64 result, and within that bound plus the reference's
    (a subset of the same terms, so 2·bound) of reference.sdpa_sinks given the same inputs."""
    got = extension.sdpa_sinks(q, k, v, sinks, sm_scale, window, q_pos, k_pos)
    assert got.dtype == torch.float32 and got.shape == q.shape
    assert torch.isfinite(got).all()
    want, bound = exact_sdpa(q, k, v, sinks, sm_scale, window, q_pos, k_pos)
    err = (got.double() - want).abs()
    assert (err <= bound).all(), f"max err/bound vs float64 {(err / bound.clamp_min(1e-300)).max().item():.3g}"
    ref = reference.sdpa_sinks(q, k, v, sinks, sm_scale, window, q_pos, k_pos)
    err = (got.double() - ref.double()).abs()
    assert (err <= 2 * bound).all(), f"max err/bound vs reference {(err / bound.clamp_min(1e-300)).max().item():.3g}"
    return got


def default_sinks(H, g):
    """Ordinary sinks plus extremes: one that takes almost all the weight (+8, and +30 where there is
    room) and one that takes none (−30)."""
    sinks = torch.randn(H, generator=g)
    sinks[0] = 8.0
    if H > 1:
        sinks[-1] = -30.0
    if H > 2:
        sinks[1] = 30.0
    return sinks


def make_case(B, T, G, K, Dh, *, ring, empty, seed, kv_dtype=torch.float32, shuffle_all=False):
    """Keys laid out like SlidingWindowCache.append returns them: `ring` older positions 0..ring−1
    and `empty` −1 slots in shuffled slot order, then the T new keys in order (positions ring ..
    ring + T − 1, those of the queries). shuffle_all permutes all slots instead."""
    g = torch.Generator().manual_seed(seed)
    H = G * K
    S = ring + empty + T
    q = torch.randn(B, T, H, Dh, generator=g)
    k = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    v = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    old = torch.cat((torch.arange(ring), torch.full((empty,), -1)))
    k_pos = torch.cat((old[torch.randperm(ring + empty, generator=g)], torch.arange(ring, ring + T)))
    if shuffle_all:
        k_pos = k_pos[torch.randperm(S, generator=g)]
    return q, k, v, default_sinks(H, g), torch.arange(ring, ring + T), k_pos


@pytest.mark.parametrize("G", [1, 3, 8])
@pytest.mark.parametrize("window", [0, 7, 128])
@pytest.mark.parametrize("T", [1, 5, 37, 130])
@pytest.mark.parametrize("B", [1, 2])
def test_matches_reference_grid(extension, B, T, window, G):
    # Dh and the cache dtype alternate over the grid (both values meet every T, window and G);
    # test_dtypes_and_head_dims covers every combination on one shape.
    Dh = (24, 64)[(T + G + window) % 2]
    kv_dtype = (torch.float32, torch.bfloat16)[(B + G) % 2]
    seed = 1000 * B + 10 * T + G + window
    q, k, v, sinks, q_pos, k_pos = make_case(B, T, G, 2, Dh, ring=70, empty=5, seed=seed, kv_dtype=kv_dtype)
    check(extension, q, k, v, sinks, 1 / math.sqrt(Dh), window, q_pos, k_pos)


@pytest.mark.parametrize("k_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("v_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Dh", [24, 64, 20])  # 20: not a multiple of 8 (scalar tails)
def test_dtypes_and_head_dims(extension, k_dtype, v_dtype, Dh):
    # bfloat16 k/v: the reference and the float64 spec get the same bfloat16 values (both upcast
    # exactly), so the float32 bound still applies.
    q, k, v, sinks, q_pos, k_pos = make_case(1, 21, 4, 2, Dh, ring=50, empty=3, seed=Dh)
    check(extension, q, k.to(k_dtype), v.to(v_dtype), sinks, 1 / math.sqrt(Dh), 16, q_pos, k_pos)


@pytest.mark.parametrize("window", [0, 5, 100])
def test_fully_shuffled_keys(extension, window):
    q, k, v, sinks, q_pos, k_pos = make_case(2, 40, 3, 2, 24, ring=90, empty=10, seed=window, shuffle_all=True)
    check(extension, q, k, v, sinks, 0.3, window, q_pos, k_pos)


@pytest.mark.parametrize("window", [0, 7, 40])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_decode_over_ring_buffer(extension, window, kv_dtype):
    # One token at position 70 against a 40-slot ring (slot p % 40 holds position p): rotated keys.
    B, H, K, Dh, S, now = 2, 16, 2, 64, 40, 70
    g = torch.Generator().manual_seed(window + 1)
    q = torch.randn(B, 1, H, Dh, generator=g)
    k = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    v = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    k_pos = torch.empty(S, dtype=torch.int64)
    for p in range(now - S + 1, now + 1):
        k_pos[p % S] = p
    check(extension, q, k, v, default_sinks(H, g), 0.125, window, torch.tensor([now]), k_pos)


@pytest.mark.parametrize("window", [0, 128])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_decode_full_cache_real_shape(extension, window, kv_dtype):
    # gpt-oss shape: 64 query heads over 8 kv heads, Dh 64; 300 keys, the query is the last one.
    B, H, K, Dh, S = 1, 64, 8, 64, 300
    g = torch.Generator().manual_seed(7 + window)
    q = torch.randn(B, 1, H, Dh, generator=g)
    k = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    v = torch.randn(B, K, S, Dh, generator=g).to(kv_dtype)
    check(extension, q, k, v, default_sinks(H, g), 0.125, window, torch.tensor([S - 1]), torch.arange(S))


def test_cache_slices_and_strided_inputs(extension):
    # FullAttentionCache hands out k[:, :, :end] of a larger buffer (not contiguous), read in place;
    # a k with a non-unit last stride and a non-contiguous bfloat16 q must work too.
    B, T, H, K, Dh, end = 2, 3, 6, 2, 24, 50
    g = torch.Generator().manual_seed(3)
    k_buf = torch.randn(B, K, 128, Dh, generator=g).to(torch.bfloat16)
    v_buf = torch.randn(B, K, 128, Dh, generator=g).to(torch.bfloat16)
    k, v = k_buf[:, :, :end], v_buf[:, :, :end]
    assert not k.is_contiguous()
    q = torch.randn(B, H, T, Dh, generator=g).to(torch.bfloat16).transpose(1, 2)
    sinks, q_pos, k_pos = torch.randn(H, generator=g), torch.arange(end - T, end), torch.arange(end)
    got = check(extension, q, k, v, sinks, 0.2, 0, q_pos, k_pos)
    k_t = k.float().transpose(2, 3).contiguous().transpose(2, 3)  # same values, last stride = S
    assert k_t.stride(3) != 1
    assert torch.equal(extension.sdpa_sinks(q.float().contiguous(), k_t, v.float(), sinks, 0.2, 0, q_pos, k_pos),
                       got)


def test_fully_masked_rows_give_exact_zeros(extension):
    B, T, H, K, Dh, S = 2, 4, 6, 3, 24, 9
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, T, H, Dh, generator=g)
    k, v = torch.randn(B, K, S, Dh, generator=g), torch.randn(B, K, S, Dh, generator=g)
    sinks = torch.tensor([8.0, -30.0, 0.0, -1e4, 1.0, 3.0])
    # Query 0 (position 2) precedes every key; with window 1 query 1's only candidate is too old.
    k_pos = torch.tensor([7, -1, 5, 9, 3, -1, 8, 4, 10])
    q_pos = torch.tensor([2, 6, 7, 10])
    for window in (0, 1):
        got = check(extension, q, k, v, sinks, 0.25, window, q_pos, k_pos)
        assert torch.equal(got[:, 0], torch.zeros(B, H, Dh))
        if window == 1:
            assert torch.equal(got[:, 1], torch.zeros(B, H, Dh))
    got = extension.sdpa_sinks(q, k, v, sinks, 0.25, 0, q_pos, torch.full((S,), -1))  # every slot empty
    assert torch.equal(got, torch.zeros(B, T, H, Dh))
    # No keys at all.
    empty = torch.zeros(B, K, 0, Dh)
    got = extension.sdpa_sinks(q, empty, empty, sinks, 0.25, 0, q_pos, torch.zeros(0, dtype=torch.long))
    assert torch.equal(got, torch.zeros(B, T, H, Dh))


def test_minus_infinity_sink_is_plain_softmax(extension):
    # A −inf sink takes no weight: ordinary attention; a row with no visible key is still 0, not NaN.
    q, k, v, _, q_pos, k_pos = make_case(1, 6, 2, 2, 24, ring=8, empty=2, seed=11)
    sinks = torch.full((4,), -math.inf)
    got = extension.sdpa_sinks(q, k, v, sinks, 0.2, 0, q_pos - 9, k_pos)  # the first queries see nothing
    want, bound = exact_sdpa(q, k, v, sinks, 0.2, 0, q_pos - 9, k_pos)
    assert not torch.isnan(got).any()
    assert ((got.double() - want).abs() <= bound).all()
    assert torch.equal(got[0, 0], torch.zeros(4, 24))


def test_sink_is_not_scaled(extension):
    # Score sm_scale·(q·k) = 0.5·2 = 1 and sink 1: the key gets e/(e + e) = 1/2.
    one = torch.ones(1, 1, 1, 1)
    got = extension.sdpa_sinks(2 * one, one, one, torch.tensor([1.0]), 0.5, 0, torch.tensor([0]), torch.tensor([0]))
    assert got.item() == pytest.approx(0.5, rel=4 * U32)


def test_two_threads(extension, intra_op_threads):
    # The conftest pins one thread; the tasks must also split correctly across threads.
    q, k, v, sinks, q_pos, k_pos = make_case(1, 130, 8, 2, 64, ring=70, empty=5, seed=9, kv_dtype=torch.bfloat16)
    args = (q, k, v, sinks, 0.125, 128, q_pos, k_pos)
    one = extension.sdpa_sinks(*args)
    with intra_op_threads(2):
        two = extension.sdpa_sinks(*args)
    assert torch.equal(one, two)  # each row is computed by one task, the same way


@pytest.mark.parametrize("case", ["decode", "prefill-window-bf16"])
def test_opcheck(extension, case):
    if case == "decode":
        q, k, v, sinks, q_pos, k_pos = make_case(1, 1, 4, 2, 24, ring=12, empty=2, seed=1)
        args = (q, k, v, sinks, 0.2, 0, q_pos, k_pos)
    else:
        q, k, v, sinks, q_pos, k_pos = make_case(2, 9, 2, 2, 24, ring=12, empty=2, seed=2, kv_dtype=torch.bfloat16)
        args = (q, k, v, sinks, 0.2, 5, q_pos, k_pos)
    torch.library.opcheck(torch.ops.gptoss.sdpa_sinks.default, args)


def test_bad_input_names_the_tensor(extension):
    B, T, H, K, S, Dh = 1, 2, 4, 2, 5, 8
    q, k, v = torch.randn(B, T, H, Dh), torch.randn(B, K, S, Dh), torch.randn(B, K, S, Dh)
    sinks, q_pos, k_pos = torch.zeros(H), torch.arange(T), torch.arange(S)
    run = extension.sdpa_sinks
    with pytest.raises(RuntimeError, match="sinks has 3 entries but q has 4 heads"):
        run(q, k, v, torch.zeros(3), 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match="q_pos has 3 entries but q has 2 tokens"):
        run(q, k, v, sinks, 1.0, 0, torch.arange(3), k_pos)
    with pytest.raises(RuntimeError, match="k_pos has 4 entries but k has 5 slots"):
        run(q, k, v, sinks, 1.0, 0, q_pos, torch.arange(4))
    with pytest.raises(RuntimeError, match="v must have k's shape"):
        run(q, k, v[:, :, :4], sinks, 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match="q has 4 heads, not a multiple of the 3 kv heads of k"):
        run(q, torch.randn(B, 3, S, Dh), torch.randn(B, 3, S, Dh), sinks, 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match=r"k must be \[B, K, S, Dh\]"):
        run(q, k[..., :4], v[..., :4], sinks, 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match="k must be float32 or bfloat16, got Half"):
        run(q, k.half(), v, sinks, 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match="q must have 4 dims, got 3"):
        run(q[0], k, v, sinks, 1.0, 0, q_pos, k_pos)
    with pytest.raises(RuntimeError, match="k_pos must be int64 or int32"):
        run(q, k, v, sinks, 1.0, 0, q_pos, k_pos.float())
