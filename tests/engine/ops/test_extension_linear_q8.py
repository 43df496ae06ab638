"""C++ linear_q8 (8-bit weights in Q8_0's layout) against a float64 truth and its PyTorch twin: both
CPU paths (the streaming kernel for up to 8 rows of x, dequantize + sgemm for more), odd sizes, the
thread count, opcheck, errors; engine.int8's quantizer against Q8_0's rule, and the C++ quantizer
against it bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.int8 import dequantize_q8_0, quantize_q8_0
from engine.ops import reference

from tests.engine.ops.naive import U32

ROWS = [1, 2, 3, 5, 8, 9, 17, 130]  # 1: four streams; 2-8: two streams of two rows (odd ones end alone); >8 sgemm
SIZES = [(32, 1), (96, 33), (320, 7), (2880, 301)]  # (in, out): one block, odd outputs, a model width


def check(got, x, q, d, b):
    """|err| ≤ (in + 2)·u·Σ|terms| (float32 products and sums in any order, the scale multiply, the
    bias) against the float64 product of the exact dequantized weights; the twin obeys the same bound."""
    w = dequantize_q8_0(q, d).double()  # exact: int8 × float16 fits a float32
    xd = x.double().reshape(-1, x.shape[-1])
    want, mag = xd @ w.T, xd.abs() @ w.abs().T
    if b is not None:
        want, mag = want + b.double(), mag + b.double().abs()
    bound = (x.shape[-1] + 2) * U32 * mag
    assert got.dtype == torch.float32 and got.shape == (*x.shape[:-1], q.shape[0])
    assert ((got.reshape(-1, q.shape[0]).double() - want).abs() <= bound).all()
    twin = reference.linear_q8(x, q, d, b).reshape(-1, q.shape[0]).double()
    assert ((twin - want).abs() <= bound).all()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n_in, n_out", SIZES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_the_exact_product(extension, rows, n_in, n_out, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n_in + n_out)
    q, d = quantize_q8_0(torch.randn(n_out, n_in, generator=g))
    x = torch.randn(rows, n_in, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    check(extension.linear_q8(x, q, d, b), x, q, d, b)


def test_leading_dims_and_bf16_activations(extension):
    q, d = quantize_q8_0(torch.randn(40, 64))
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    got = extension.linear_q8(x, q, d, None)
    assert got.shape == (2, 3, 40)
    check(got, x.float(), q, d, None)


@pytest.mark.parametrize("rows", [1, 4, 20])
def test_the_thread_count_does_not_change_a_bit(extension, intra_op_threads, rows):
    q, d = quantize_q8_0(torch.randn(257, 2880))
    x = torch.randn(rows, 2880)
    one = extension.linear_q8(x, q, d, None)
    with intra_op_threads(2):
        two = extension.linear_q8(x, q, d, None)
    assert torch.equal(one, two)


def test_opcheck(extension):
    q, d = quantize_q8_0(torch.randn(33, 96))
    for x in (torch.randn(1, 96), torch.randn(12, 96)):
        torch.library.opcheck(torch.ops.gptoss.linear_q8.default, (x, q, d, torch.randn(33)))


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(1, 96), torch.zeros(3, 96, dtype=torch.uint8), torch.zeros(3, 3, dtype=torch.half)),
     "qweight must be Char"),
    (lambda: (torch.randn(1, 90), torch.zeros(3, 90, dtype=torch.int8), torch.zeros(3, 2, dtype=torch.half)),
     "whole blocks of 32"),
    (lambda: (torch.randn(1, 96), torch.zeros(3, 96, dtype=torch.int8), torch.zeros(3, 2, dtype=torch.half)),
     r"scales must have shape \[3, 3\]"),
    (lambda: (torch.randn(1, 64), torch.zeros(3, 96, dtype=torch.int8), torch.zeros(3, 3, dtype=torch.half)),
     "x rows must have 96 entries"),
    (lambda: (torch.randn(1, 96), torch.zeros(3, 96, dtype=torch.int8), torch.zeros(3, 3, dtype=torch.float32)),
     "scales must be Half"),
])
def test_errors_name_the_argument(extension, args, match):
    with pytest.raises(RuntimeError, match=match):
        extension.linear_q8(*args(), None)


def test_quantizer_follows_q8_0():
    below_half = 0.49999997  # the float32 just below 0.5: floor(x + 0.5) would give 1
    block = torch.tensor([[127.0, -63.5, 0.5, -0.5, 1.5, 2.5, 0.0, 63.4, below_half, -below_half] + [0.0] * 22])
    q, d = quantize_q8_0(block)
    assert d.dtype == torch.float16 and d.item() == 1.0  # max |w| / 127
    # halves round away from zero, as C's roundf in llama.cpp's quantize_row_q8_0
    assert q[0, :10].tolist() == [127, -64, 1, -1, 2, 3, 0, 63, 0, 0]
    zero_q, zero_d = quantize_q8_0(torch.zeros(2, 64))
    assert not zero_q.any() and not zero_d.any()
    w = torch.randn(50, 2880, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    q, d = quantize_q8_0(w, rows_per_chunk=7)  # chunking changes nothing
    assert torch.equal((q, d)[0], quantize_q8_0(w)[0]) and torch.equal(d, quantize_q8_0(w)[1])
    scale = w.float().reshape(50, 90, 32).abs().amax(-1) / 127
    error = (dequantize_q8_0(q, d) - w.float()).reshape(50, 90, 32).abs().amax(-1)
    # half a step of the unrounded scale, plus what rounding the scale to float16 moves 127 steps
    assert (error <= scale / 2 + 127 * (d.float() - scale).abs() + 1e-7).all()
    with pytest.raises(ValueError, match="blocks of 32"):
        quantize_q8_0(torch.zeros(2, 33))


def _quantizer_inputs(dtype):
    """Random rows of several sizes and magnitudes, with an all-zero block, values that land on
    halves of a step, and one block whose largest value is subnormal in float16's scale."""
    g = torch.Generator().manual_seed(7)
    for rows, cols in [(1, 32), (3, 96), (37, 2880), (130, 160)]:
        yield (torch.randn(rows, cols, generator=g) * 10 ** torch.randint(-6, 3, (rows, 1), generator=g)).to(dtype)
    ties = torch.arange(-64, 64, dtype=torch.float32).reshape(4, 32) + 0.5
    ties[0, 0], ties[1] = 127.0, 0.0  # a block with max 127 (step 1: every value a tie), a zero block
    yield ties.to(dtype)
    yield (torch.randn(2, 64, generator=g) * 1e-9).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpp_quantizer_equals_the_twin(extension, dtype):
    for w in _quantizer_inputs(dtype):
        q, d = extension.quantize_q8_0(w)
        want_q, want_d = quantize_q8_0(w)
        assert q.dtype == torch.int8 and d.dtype == torch.float16
        assert torch.equal(q, want_q) and torch.equal(d.view(torch.int16), want_d.view(torch.int16))
    strided = torch.randn(64, 96)[:, :64]  # a non-contiguous view quantizes as its values
    assert torch.equal(extension.quantize_q8_0(strided)[0], quantize_q8_0(strided.contiguous())[0])


def test_cpp_quantizer_opcheck_and_errors(extension):
    torch.library.opcheck(torch.ops.gptoss.quantize_q8_0.default, (torch.randn(5, 64),))
    with pytest.raises(RuntimeError, match="blocks of 32"):
        extension.quantize_q8_0(torch.zeros(2, 33))
    with pytest.raises(RuntimeError, match="weight must be float32, bfloat16 or float16"):
        extension.quantize_q8_0(torch.zeros(2, 32, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="weight must have 2 dims"):
        extension.quantize_q8_0(torch.zeros(64))
