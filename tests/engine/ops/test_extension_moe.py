"""C++ moe_mxfp4 (csrc/cpu/moe_mxfp4.cpp) against a float64 truth and against the reference op.

The kernel decodes MXFP4 in registers and accumulates in float32 without rounding the two matrix
products to the compute dtype (the reference's F.linear does round them in bfloat16), so it is
compared with the float64 truth of tests/engine/ops/test_moe.py under the same bounds the reference
meets there, and with the reference under the sum of both allowances. The grid crosses the kernel's
two paths: experts with fewer than 4 routed tokens run the in-register path (up to 3 tokens share a
decoded row), experts with 4 or more the buffered K-step path (4 rows × 3 tokens per register tile
in float32, 32 rows × up to 12 tokens with AVX-512 BF16, so token counts of every residue mod 12 are
covered); odd block counts exercise the zero-padded last chunk and D = 2880 exercises several
float32 K-steps. Every test runs on each kernel family the CPU has (the `cpu_isa` fixture); on AMX
CPUs experts with 4 or more tokens take the tile-multiply path (16-token tiles in pairs: the same
token counts cover full, paired and lone partial tiles).

The same kernels read a GGUF's experts in place (moe_mxfp4_ggml: ggml's 17-byte blocks, gate and up
apart): every case of the grid also runs on its weights rewritten in that layout (`ggml_args`, from
ggml's format) and is held to the same bounds.
"""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.ggml_mxfp4 import ggml_args
from tests.engine.ops.naive import U32, decode_f64
from tests.engine.ops.test_moe import (ALPHA, LIMIT, SILU_SLOPE, _assert_clamp_exercised, fp32_tolerance, make_case,
                                       naive_moe, plain_bf16_moe)

GEMM_MIN_TOKENS = 4  # kGemmMinTokens in moe_mxfp4.cpp: the switch between the two paths


@pytest.fixture(autouse=True)
def _every_instruction_set(cpu_isa):
    """Every test here runs on each kernel family the CPU has (AVX2, AVX-512 BF16, AMX; bf16 inputs
    for the last two)."""

# (E, A, N, D, I): D and I multiples of 32, none a power of two; D/32 and I/32 are odd except for 2880.
GRID = [
    (3, 1, 1, 96, 160),      # decode: one token, in-register path
    (3, 2, 2, 160, 96),      # two tokens: in-register groups of 1 and 2
    (5, 2, 7, 96, 160),      # 2-4 tokens per expert: both paths side by side
    (3, 2, 7, 160, 96),      # an unused expert; the others take 7 tokens (buffered, 3 + 3 + 1)
    (32, 4, 2, 2880, 160),   # 20b hidden size (90 blocks: 6 K-steps), decode-like routing
    (5, 2, 33, 160, 2880),   # 20b expert width in the second product
    (3, 2, 13, 3232, 96),    # 101 blocks: two K-steps of the AVX-512 BF16 path (96 blocks each)
    (5, 4, 33, 160, 96),
    (32, 4, 33, 96, 96),     # 20b expert count: ~4 tokens per expert, both paths
    (3, 3, 33, 96, 96),      # A = E: every token uses every expert
    (5, 1, 130, 96, 160),    # ~30 tokens per expert
    (32, 2, 130, 160, 96),
]
DTYPES = [torch.float32, torch.bfloat16]


def _seed(E, A, N, D, I, dtype):
    return E * 7919 + A * 613 + N * 31 + D + I + (1 if dtype == torch.bfloat16 else 0)


def test_grid_crosses_both_paths_and_repeats_experts():
    counts = []
    for E, A, N, D, I in GRID:
        args, _ = make_case(E, A, N, D, I, seed=_seed(E, A, N, D, I, torch.float32))
        ids = args[1]
        per_expert = torch.bincount(ids.flatten(), minlength=E)
        counts += per_expert[per_expert > 0].tolist()
        if N >= 7:
            assert per_expert.max() > 1  # some expert serves several tokens
    small = {m for m in counts if m < GEMM_MIN_TOKENS}
    assert small == {1, 2, 3}, small
    assert {m % 12 for m in counts if m >= GEMM_MIN_TOKENS} == set(range(12))


def test_bf16_inputs_take_the_kernels_of_the_chosen_family(extension, cpu_isa, monkeypatch):
    # The families sum in different orders: bitwise different, all within the bounds above. AMX takes
    # over from AVX-512 BF16 at 4 tokens per expert (one token: the same in-register kernel).
    lower = {"avx512_bf16": ("avx2", (1, 33)), "amx": ("avx512_bf16", (33,))}
    if cpu_isa not in lower:
        pytest.skip("the AVX2 kernels are the lowest family")
    below, token_counts = lower[cpu_isa]
    for N in token_counts:
        args, _ = make_case(32, 4, N, 2880, 160, seed=N, dtype=torch.bfloat16)
        native = extension.moe_mxfp4(*args)  # the family the fixture chose
        with monkeypatch.context() as env:
            env.setenv("GPTOSS_CPU_ISA", below)
            assert not torch.equal(native, extension.moe_mxfp4(*args))


def _moe(extension, args, layout):
    """The kernel on args (moe_mxfp4's), with the weights as they are or rewritten in ggml's layout."""
    return extension.moe_mxfp4(*args) if layout == "hf" else extension.moe_mxfp4_ggml(*ggml_args(args))


@pytest.mark.parametrize("layout", ["hf", "ggml"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E, A, N, D, I", GRID)
def test_matches_float64_truth_and_reference(extension, E, A, N, D, I, dtype, layout):
    args, unused = make_case(E, A, N, D, I, seed=_seed(E, A, N, D, I, dtype), dtype=dtype)
    want, scale, pre = naive_moe(*args)  # float64 on the exact (possibly bf16) inputs
    _assert_clamp_exercised(pre)
    got = _moe(extension, args, layout)
    ref = reference.moe_mxfp4(*args)
    assert got.dtype == torch.float32 and got.shape == (N, D)
    err = (got.double() - want).abs()
    # float32 part: every stage of the kernel rounds to float32 at most a few times per term and
    # applies the block scales (powers of two) exactly, so its error is the random-sign rounding sum
    # bounded by fp32_tolerance (8u times the first-order magnitude M through which roundings reach
    # the output; see test_moe.fp32_tolerance for why 8u, not the worst-case n·u, is the right scale).
    bound = fp32_tolerance(scale)
    if dtype == torch.float32:
        assert (err <= bound).all(), f"max err/bound {(err / bound).max().item():.3g}"
        # The reference meets the same bound against the truth, hence the two differ by at most twice it.
        assert ((got.double() - ref.double()).abs() <= 2 * bound).all()
    else:
        # bfloat16 compute: act is rounded to bf16 before the second product, as in the reference.
        # Flash-attention rule: at most twice the worst error of the plain all-bf16 computation, plus
        # the float32 bound for what the kernel keeps in float32.
        plain = plain_bf16_moe(*args).double()
        plain_err = (plain - want).abs().max()
        allowed = 2 * plain_err + bound.max()
        assert err.max() <= allowed, f"err {err.max().item():.4g} allowed {allowed.item():.4g}"
        assert plain_err > 4 * bound.max()  # bf16 rounding dominates the allowance: the rule has teeth
        # The reference obeys the same rule (test_moe), so the two differ by at most both allowances.
        assert (got.double() - ref.double()).abs().max() <= 2 * allowed
    if unused is not None:
        # An expert no token chose is never read: garbage (and inf scales) there changes nothing.
        x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit = args
        w1b, w2b, w1s, w2s, b1, b2 = w1b.clone(), w2b.clone(), w1s.clone(), w2s.clone(), b1.clone(), b2.clone()
        w1b[unused], w2b[unused], w1s[unused], w2s[unused] = 0x77, 0x77, 255, 255
        b1[unused], b2[unused] = float("nan"), float("nan")
        assert torch.equal(_moe(extension, (x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit), layout), got)


def truth_with_bf16_act(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha,
                        limit):
    """float64 evaluation with act rounded to bfloat16 before the second product (the op's rule for
    bf16 compute), and the float32 error scale M of naive_moe from the rounded act on, plus what a
    different rounding of act can cost: the kernel's float32 act lies within 8u·M_act of act, so it
    rounds to a bf16 value in [lo, hi] (rounding is monotone), and the output may move by w·|W2|·(hi − lo)."""
    x = x.double()
    N, A = expert_ids.shape
    out = torch.zeros(N, w2_blocks.shape[1], dtype=torch.float64)
    scale, flips = torch.zeros_like(out), torch.zeros_like(out)
    for n in range(N):
        for a in range(A):
            e = int(expert_ids[n, a])
            W1, W2 = decode_f64(w1_blocks[e], w1_scales[e]), decode_f64(w2_blocks[e], w2_scales[e])
            h = W1 @ x[n] + b1[e].double()
            m_h = W1.abs() @ x[n].abs() + b1[e].double().abs()
            G, U = h[0::2].clamp(max=limit), h[1::2].clamp(min=-limit, max=limit)
            silu = G * torch.sigmoid(alpha * G)
            act = silu * (U + 1)
            m_act = SILU_SLOPE * (U + 1).abs() * m_h[0::2] + silu.abs() * m_h[1::2] + ((alpha * G).abs() + 1) * act.abs()
            slack = 8 * U32 * m_act
            lo, hi = (act - slack).to(torch.bfloat16).double(), (act + slack).to(torch.bfloat16).double()
            act = act.to(torch.bfloat16).double()
            y = W2 @ act + b2[e].double()
            w = float(expert_weights[n, a])
            out[n] += w * y
            scale[n] += w * (W2.abs() @ act.abs() + b2[e].double().abs()) + (w * y).abs()
            flips[n] += w * (W2.abs() @ (hi - lo))
    return out, scale, flips


@pytest.mark.parametrize("case", [(3, 2, 3, 96, 160), (3, 2, 33, 160, 96)])  # in-register and buffered paths
def test_bfloat16_act_is_rounded_before_second_product(extension, case):
    # With act rounded to bf16 and everything else exact, the kernel must agree to float32 rounding
    # plus the cost of acts that sit on a bf16 rounding boundary (within float32 error), and the
    # unrounded truth must be clearly outside that bound: the test sees the rounding.
    args, _ = make_case(*case, seed=sum(case) + 1, dtype=torch.bfloat16)
    want, scale, flips = truth_with_bf16_act(*args)
    unrounded, _, _ = naive_moe(*args)
    got = extension.moe_mxfp4(*args).double()
    bound = fp32_tolerance(scale) + flips
    assert ((got - want).abs() <= bound).all(), f"max err/bound {((got - want).abs() / bound).max().item():.3g}"
    assert ((unrounded - want).abs() > 10 * bound).float().mean() > 0.25


@pytest.mark.parametrize("layout", ["hf", "ggml"])
@pytest.mark.parametrize("case", [(32, 4, 1, 2880, 160), (5, 2, 130, 160, 96), (32, 4, 33, 96, 2880)])
def test_same_bits_with_any_thread_count(extension, case, layout, intra_op_threads):
    # Each thread owns whole output rows and adds the experts' contributions in ascending expert
    # order, so the thread count must not change a single bit. These cases are large enough to be
    # split across threads (more than 2^17 multiply-adds per thread).
    args, _ = make_case(*case, seed=sum(case), dtype=torch.bfloat16)
    results = []
    for n in (1, 2, 3):
        with intra_op_threads(n):
            results.append(_moe(extension, args, layout))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_routing_weight_scales_whole_expert_output(extension):
    # W2 = 0: each expert's output is exactly b2[e], so out = w0·b2[e0] + w1·b2[e1] (2u relative).
    args, _ = make_case(3, 2, 5, 96, 96, seed=9)  # 10 pairs over 2 of the experts: the buffered path
    x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit = args
    got = extension.moe_mxfp4(x, ids, w, w1b, w1s, b1, torch.zeros_like(w2b), w2s, b2, alpha, limit)
    want = (w.double().unsqueeze(-1) * b2[ids].double()).sum(1)
    tol = 2 * torch.finfo(torch.float32).eps / 2 * (w.double().unsqueeze(-1) * b2[ids].double().abs()).sum(1)
    assert ((got.double() - want).abs() <= tol).all()


def test_tiny_and_subnormal_block_scales(extension):
    # Scale bytes 0 and 1 give the float32 subnormals 2^-127 and 2^-126: finite results, within the
    # float32 bound like everything else.
    args, _ = make_case(3, 2, 7, 96, 160, seed=5)
    x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit = args
    g = torch.Generator().manual_seed(6)
    w1s = torch.where(torch.rand(w1s.shape, generator=g) < 0.3, torch.randint(0, 3, w1s.shape, generator=g), w1s)
    w1s = w1s.to(torch.uint8)
    args = (x, ids, w, w1b, w1s, b1, w2b, w2s, b2, alpha, limit)
    want, scale, _ = naive_moe(*args)
    got = extension.moe_mxfp4(*args)
    assert torch.isfinite(got).all()
    assert ((got.double() - want).abs() <= fp32_tolerance(scale)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(3, 2, 2, 96, 96), (3, 2, 5, 64 + 32, 160)])
def test_opcheck(extension, case, dtype):
    args, _ = make_case(*case, seed=3, dtype=dtype)
    torch.library.opcheck(torch.ops.gptoss.moe_mxfp4.default, args)


def _bad(args, **changes):
    names = ["x", "expert_ids", "expert_weights", "w1_blocks", "w1_scales", "b1", "w2_blocks", "w2_scales", "b2",
             "alpha", "limit"]
    values = dict(zip(names, args))
    values.update(changes)
    return [values[n] for n in names]


@pytest.mark.parametrize("change, message", [
    (lambda a: dict(x=a[0][:, :64]), "w1_blocks must be"),
    (lambda a: dict(x=a[0].double()), "x must be float32 or bfloat16"),
    (lambda a: dict(x=a[0][0]), "x must have 2 dims"),
    (lambda a: dict(expert_ids=a[1].float()), "expert_ids must be int64 or int32"),
    (lambda a: dict(expert_ids=a[1][:1]), "expert_ids has 1 rows but x has 3"),
    (lambda a: dict(expert_ids=a[1].clone().fill_(3)), r"expert_ids must be in \[0, 3\), got 3"),
    (lambda a: dict(expert_ids=a[1].clone().fill_(-1)), r"expert_ids must be in \[0, 3\), got -1"),
    (lambda a: dict(expert_weights=a[2][:, :1]), "expert_weights has shape"),
    (lambda a: dict(expert_weights=a[2].double()), "expert_weights must be Float"),
    (lambda a: dict(w1_blocks=a[3].to(torch.int8)), "w1_blocks must be Byte"),
    (lambda a: dict(w1_scales=a[4][:, :, :1]), "w1_scales must be"),
    (lambda a: dict(b1=a[5][:, :10]), "b1 must be"),
    (lambda a: dict(b1=a[5].double()), "b1 must be Float"),
    (lambda a: dict(w2_blocks=a[6][:, :32]), "w2_blocks must be"),
    (lambda a: dict(w2_scales=a[7].float()), "w2_scales must be Byte"),
    (lambda a: dict(b2=a[8][:2]), "b2 must be"),
])
def test_bad_input_names_the_tensor(extension, change, message):
    args, _ = make_case(3, 2, 3, 96, 96, seed=1)
    with pytest.raises(RuntimeError, match=message):
        extension.moe_mxfp4(*_bad(args, **change(args)))


@pytest.mark.parametrize("change, message", [
    (lambda g: dict(gate=g["gate"][..., :16]), r"gate must be ggml's MXFP4 blocks uint8 \[E, rows, blocks, 17\]"),
    (lambda g: dict(up=g["up"][:, :32].contiguous()), "up must have gate's shape"),
    (lambda g: dict(down=g["down"][:, :32].contiguous()), "down must be"),
    (lambda g: dict(down=g["down"].view(torch.int8)), "down must be uint8"),
    (lambda g: dict(gate=g["gate"].transpose(0, 1).contiguous().transpose(0, 1)), "gate must be contiguous"),
    (lambda g: dict(b1=g["b1"][:, :10]), "b1 must be"),
    (lambda g: dict(x=g["x"][:, :64]), "gate must be"),
])
def test_ggml_bad_input_names_the_tensor(extension, change, message):
    args, _ = make_case(3, 2, 3, 96, 96, seed=1)
    names = ["x", "expert_ids", "expert_weights", "gate", "up", "b1", "down", "b2", "alpha", "limit"]
    values = dict(zip(names, ggml_args(args)))
    values.update(change(values))
    with pytest.raises(RuntimeError, match=message):
        extension.moe_mxfp4_ggml(*[values[n] for n in names])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ggml_opcheck(extension, dtype):
    args, _ = make_case(3, 2, 5, 96, 160, seed=3, dtype=dtype)
    torch.library.opcheck(torch.ops.gptoss.moe_mxfp4_ggml.default, ggml_args(args))


def test_strided_inputs_and_int32_ids(extension):
    # As MoEBlock calls it: ids and weights are column slices of sorted [N, E] tensors.
    args, _ = make_case(5, 2, 9, 96, 160, seed=8, dtype=torch.bfloat16)
    x, ids, w = args[:3]
    wide_ids = torch.cat((ids, torch.zeros_like(ids)), dim=1)[:, :2]
    wide_w = torch.cat((w, torch.ones_like(w)), dim=1)[:, :2]
    wide_x = torch.cat((x, x), dim=1)[:, :96]
    assert not (wide_ids.is_contiguous() or wide_w.is_contiguous() or wide_x.is_contiguous())
    want = extension.moe_mxfp4(*args)
    assert torch.equal(extension.moe_mxfp4(wide_x, wide_ids, wide_w, *args[3:]), want)
    assert torch.equal(extension.moe_mxfp4(x, ids.int(), w, *args[3:]), want)


def test_no_tokens(extension):
    args, _ = make_case(3, 2, 1, 96, 96, seed=2)
    x, ids, w = args[0][:0], args[1][:0], args[2][:0]
    got = extension.moe_mxfp4(x, ids, w, *args[3:])
    assert got.shape == (0, 96) and got.dtype == torch.float32


def test_alpha_and_limit_are_used(extension):
    args, _ = make_case(3, 2, 4, 96, 96, seed=4)
    base = extension.moe_mxfp4(*args)
    want, _, _ = naive_moe(*args[:-2], 1.0, 3.0)
    got = extension.moe_mxfp4(*args[:-2], 1.0, 3.0)
    assert not torch.equal(got, base)
    assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


def test_constants_match_reference_test():
    assert (ALPHA, LIMIT) == (1.702, 7.0)
