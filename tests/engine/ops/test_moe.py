"""reference.moe_mxfp4 against a float64 per-(token, slot) evaluation of the gpt-oss MoE: MXFP4
experts decoded by the spec decoder, interleaved gate/up rows, clamped SwiGLU, biases inside the
per-expert output, and the routing weights applied last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.ops import reference

from tests.engine.ops.ggml_mxfp4 import ggml_args
from tests.engine.ops.naive import U32, decode_f64

ALPHA, LIMIT = 1.702, 7.0
# sup_g d/dg [g·sigmoid(α·g)] = max_z σ(z)·(1 + z·(1 − σ(z))) ≈ 1.0998 (z ≈ 2.40), for any α.
SILU_SLOPE = 1.1


def make_case(E, A, N, D, I, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w1_blocks = torch.randint(0, 256, (E, 2 * I, D // 32, 16), generator=g).to(torch.uint8)
    w2_blocks = torch.randint(0, 256, (E, D, I // 32, 16), generator=g).to(torch.uint8)
    # Multipliers 2^-7 .. 2^0: with D, I ~ 100 pre-activations reach tens, so the clamp at 7 bites.
    w1_scales = torch.randint(120, 128, (E, 2 * I, D // 32), generator=g).to(torch.uint8)
    w2_scales = torch.randint(120, 128, (E, D, I // 32), generator=g).to(torch.uint8)
    b1 = torch.randn(E, 2 * I, generator=g)
    b2 = torch.randn(E, D, generator=g)
    x = torch.randn(N, D, generator=g).to(dtype)
    # Distinct experts per token; when A < E the last-drawn expert is used by no token at all.
    pool = torch.randperm(E, generator=g)
    unused = int(pool[-1]) if A < E else None
    allowed = pool[:-1] if A < E else pool
    expert_ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:A]] for _ in range(N)])
    expert_weights = torch.softmax(torch.randn(N, A, generator=g), dim=-1)
    args = (x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, ALPHA, LIMIT)
    return args, unused


def naive_moe(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha, limit):
    """float64 output [N, D], its float32 error scale M [N, D], and all pre-activations seen.

    M is the first-order magnitude through which float32 roundings (each ≤ u·|value|) reach the
    output: h = W1·x + b1 has magnitude |W1||x| + |b1|; the clamps are 1-Lipschitz and
    act = G·σ(αG)·(U + 1) passes errors on with slopes ≤ 1.1·|U + 1| (for G) and |G·σ(αG)| (for U),
    plus its own roundings (α·G shifts σ by ≤ |αG|·u relatively) ~ (|αG| + 1)·|act|; then
    y = W2·act + b2 has |W2|·M_act + |W2||act| + |b2|, and the mixing adds |w·y|.
    """
    x = x.double()
    N, A = expert_ids.shape
    out = torch.zeros(N, w2_blocks.shape[1], dtype=torch.float64)
    scale = torch.zeros_like(out)
    decoded = {}
    pre = []
    for n in range(N):
        for a in range(A):
            e = int(expert_ids[n, a])
            if e not in decoded:
                decoded[e] = decode_f64(w1_blocks[e], w1_scales[e]), decode_f64(w2_blocks[e], w2_scales[e])
            W1, W2 = decoded[e]
            h = W1 @ x[n] + b1[e].double()
            m_h = W1.abs() @ x[n].abs() + b1[e].double().abs()
            pre.append(h)
            gate, up = h[0::2], h[1::2]
            G = gate.clamp(max=limit)
            U = up.clamp(min=-limit, max=limit)
            silu = G * torch.sigmoid(alpha * G)
            act = silu * (U + 1)
            m_act = SILU_SLOPE * (U + 1).abs() * m_h[0::2] + silu.abs() * m_h[1::2] \
                + ((alpha * G).abs() + 1) * act.abs()
            y = W2 @ act + b2[e].double()
            m_y = W2.abs() @ m_act + W2.abs() @ act.abs() + b2[e].double().abs()
            w = float(expert_weights[n, a])
            out[n] += w * y
            scale[n] += w * m_y + (w * y).abs()
    return out, scale, torch.cat(pre)


def fp32_tolerance(scale: torch.Tensor) -> torch.Tensor:
    # Inputs are zero-mean random, so the k-th partial sum of an n-term sum is ~√k·σ and the
    # independent roundings (≤ u each, Higham & Mary 2019's model) add up to a standard deviation of
    # u·nσ/√6 ≲ 0.7·u·Σ|terms|: each stage errs by well under u times its magnitude, and 8u·M
    # allows > 10σ. (The worst-case (n + 1)·u·Σ|terms| would be ~100× looser and miss real bugs.)
    return 8 * U32 * scale


def plain_bf16_moe(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha, limit):
    """The straightforward all-bfloat16 PyTorch computation (the yardstick for bf16 accuracy)."""
    bf = torch.bfloat16
    out = torch.zeros(x.shape[0], w2_blocks.shape[1], dtype=bf)
    for n in range(x.shape[0]):
        for a in range(expert_ids.shape[1]):
            e = int(expert_ids[n, a])
            W1, W2 = decode_f64(w1_blocks[e], w1_scales[e]).to(bf), decode_f64(w2_blocks[e], w2_scales[e]).to(bf)
            h = F.linear(x[n].to(bf), W1, b1[e].to(bf))
            G = h[0::2].clamp(max=limit)
            U = h[1::2].clamp(min=-limit, max=limit)
            act = G * torch.sigmoid(alpha * G) * (U + 1)
            out[n] += expert_weights[n, a].to(bf) * F.linear(act, W2, b2[e].to(bf))
    return out


# (E, A, N, D, I): D and I multiples of 32, not powers of two.
GRID = [
    (3, 1, 1, 96, 160),
    (3, 2, 7, 160, 96),
    (3, 3, 7, 96, 96),     # A = E: every expert used
    (5, 1, 33, 96, 160),
    (5, 4, 33, 160, 96),
    (8, 2, 33, 96, 160),
    (8, 4, 7, 96, 160),
]


def _assert_clamp_exercised(pre: torch.Tensor) -> None:
    gate, up = pre[0::2], pre[1::2]
    assert (gate > LIMIT).any() and (gate < LIMIT).any()
    assert (up > LIMIT).any() and (up < -LIMIT).any() and (up.abs() < LIMIT).any()


@pytest.mark.parametrize("E, A, N, D, I", GRID)
def test_float32_matches_naive(E, A, N, D, I):
    args, unused = make_case(E, A, N, D, I, seed=E * 1000 + A * 100 + N)
    want, scale, pre = naive_moe(*args)
    _assert_clamp_exercised(pre)
    got = reference.moe_mxfp4(*args)
    assert got.dtype == torch.float32 and got.shape == (N, D)
    err, bound = (got.double() - want).abs(), fp32_tolerance(scale)
    assert (err <= bound).all(), f"max err/bound {(err / bound).max().item():.3g}"
    if unused is not None:
        # An expert no token chose cannot influence the output, whatever its weights are.
        x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit = args
        w1b, w2b, b1, b2 = w1b.clone(), w2b.clone(), b1.clone(), b2.clone()
        w1b[unused], w2b[unused], b1[unused], b2[unused] = 0x77, 0x77, 1e6, -1e6
        assert torch.equal(reference.moe_mxfp4(x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit), got)


@pytest.mark.parametrize("E, A, N, D, I", GRID)
def test_bfloat16_compute_within_twice_plain_bf16_error(E, A, N, D, I):
    args, _ = make_case(E, A, N, D, I, seed=E * 1000 + A * 100 + N + 1, dtype=torch.bfloat16)
    want, scale, pre = naive_moe(*args)  # float64 on the exact bf16 inputs
    fp32_bound = fp32_tolerance(scale)
    _assert_clamp_exercised(pre)
    got = reference.moe_mxfp4(*args)
    assert got.dtype == torch.float32 and got.shape == (N, D)
    plain = plain_bf16_moe(*args).double()
    # Flash-attention-style rule: at most twice the plain bf16 computation's worst error, plus the
    # float32 rounding bound for the parts the op keeps in float32.
    allowed = 2 * (plain - want).abs().max() + fp32_bound.max()
    assert (got.double() - want).abs().max() <= allowed
    assert (plain - want).abs().max() > 10 * fp32_bound.max()  # bf16 rounding dominates: the rule has teeth


def test_routing_weight_scales_whole_expert_output():
    # One token, two slots, W2 = 0 (all-zero blocks): each expert's output is exactly its b2, so the
    # result must be w0·b2[e0] + w1·b2[e1] — the bias sits inside the expert and is weighted too.
    args, _ = make_case(3, 2, 1, 96, 96, seed=9)
    x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit = args
    w2b = torch.zeros_like(w2b)
    got = reference.moe_mxfp4(x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit)
    want = w[0, 0].double() * b2[ids[0, 0]].double() + w[0, 1].double() * b2[ids[0, 1]].double()
    # Two products and one sum per element: 2u relative to |w0·b| + |w1·b|.
    tol = 2 * U32 * (w[0, 0] * b2[ids[0, 0]].abs() + w[0, 1] * b2[ids[0, 1]].abs()).double()
    assert ((got[0].double() - want).abs() <= tol).all()


def test_ggml_blocks_decode_as_the_format_says():
    # One block: scale byte 128 (×2); byte j holds element j (low nibble) and element j + 16 (high).
    # Elements 0-15 get nibbles 0-15 and elements 16-31 nibbles 15-0.
    block = torch.tensor([128] + [j | ((15 - j) << 4) for j in range(16)], dtype=torch.uint8)
    fp4 = torch.tensor(reference.FP4_VALUES, dtype=torch.float32)
    want = 2 * torch.cat((fp4, fp4.flip(0)))
    assert torch.equal(reference.ggml_mxfp4_dequantize(block.reshape(1, 1, 17), torch.float32), want.reshape(1, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("E, A, N, D, I", [(3, 2, 5, 96, 160), (5, 4, 9, 160, 96)])
def test_ggml_layout_is_the_same_computation(E, A, N, D, I, dtype):
    # The same weights in ggml's layout decode to the same matrices: the same result to the bit.
    args, _ = make_case(E, A, N, D, I, seed=E + N, dtype=dtype)
    assert torch.equal(reference.moe_mxfp4_ggml(*ggml_args(args)), reference.moe_mxfp4(*args))
