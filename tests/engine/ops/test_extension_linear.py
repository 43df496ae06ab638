"""C++ linear against a float64 truth and the reference: both CPU paths (the streaming kernel for a few
rows of x; for many, widening + sgemm, or with bf16 weights vdpbf16ps panels on AVX-512 BF16 CPUs
and tile multiplies on AMX ones), bf16 and fp32 weights, odd sizes, strides, opcheck, errors.

The kernel accumulates in float32 and returns float32; unlike the reference it never rounds the
product to bfloat16, so it is compared with the exact product of the inputs it actually multiplies
(x rounded to W's dtype) and with the reference only up to the reference's own bf16 rounding.
"""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import U32, U_BF16


@pytest.fixture(autouse=True)
def _every_instruction_set(cpu_isa):
    """Every test here runs on each kernel family the CPU has (AVX2, AVX-512 BF16, AMX)."""

# Few rows take the streaming kernel, many the sgemm path (or, for bf16 weights on AVX-512 BF16 CPUs,
# 32 W rows × up to 12 x rows register tiles: 9, 12, 13, 17 and 130 leave several remainders; on AMX
# CPUs 16-token tiles, in pairs: 17 and 130 end in a lone, partial tile, 300 crosses a 256-token group).
ROWS = [1, 2, 3, 5, 9, 12, 13, 17, 130, 300]
# (in, out): in below one vector (all tail), odd sizes, and a model width whose 600 rows span
# several widened blocks in the sgemm path (and several 32-row panels in the bf16 ones: 2880 is whole
# AMX tiles, read in place, the last panel of 24 rows goes through a zero-padded copy).
SIZES = [(1, 1), (13, 5), (97, 33), (2880, 600)]


def truth(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    """float64 x·Wᵀ + b of x rounded to W's dtype (exact products, float64 sums), and
    Σ_k |x_k·W_jk| + |b_j|, the scale of float32 summation errors. Returns [rows, out] tensors."""
    xd = x.to(w.dtype).double().reshape(-1, x.shape[-1])
    wd = w.double()
    prod, mag = xd @ wd.T, xd.abs() @ wd.abs().T
    if b is None:
        return prod, prod, mag
    return prod, prod + b.double(), mag + b.double().abs()


def check(got, x, w, b):
    n_in, n_out = w.shape[1], w.shape[0]
    assert got.dtype == torch.float32 and got.shape == (*x.shape[:-1], n_out)
    prod, want, mag = truth(x, w, b)
    got = got.reshape(-1, n_out).double()
    # n_in float32 products and sums in any order plus the bias add: |err| ≤ (n_in + 1)·u·Σ|terms| (Higham γ_n).
    kernel_err = (n_in + 1) * U32 * mag
    assert ((got - want).abs() <= kernel_err).all()
    # The reference has the same float32 error before rounding x·Wᵀ to bf16 for bf16 weights (≤ u_bf16 of
    # its float32 sum) and adding the bias in float32 (≤ u/(1-u) of its own result).
    ref = reference.linear(x, w, b).reshape(-1, n_out).double()
    ref_rounding = U_BF16 * (prod.abs() + kernel_err) if w.dtype == torch.bfloat16 else 0
    assert ((got - ref).abs() <= 2 * kernel_err + ref_rounding + U32 / (1 - U32) * ref.abs()).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_in, n_out", SIZES)
@pytest.mark.parametrize("rows", ROWS)
def test_matches_truth_and_reference(extension, rows, n_in, n_out, w_dtype, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n_in + n_out)
    x = torch.randn(rows, n_in, generator=g) * 2
    w = torch.randn(n_out, n_in, generator=g).to(w_dtype)
    b = torch.randn(n_out, generator=g) if bias else None
    check(extension.linear(x, w, b), x, w, b)


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 130])
def test_leading_dims_strides_and_dtypes(extension, rows, w_dtype):
    g = torch.Generator().manual_seed(rows)
    n_in, n_out = 45, 21
    base = torch.randn(2, rows, 3, 2 * n_in, generator=g)
    x = base[..., ::2].transpose(1, 2)  # [2, 3, rows, in], neither contiguous nor unit-stride
    assert not x.is_contiguous()
    w_big = torch.randn(n_out, n_in + 7, generator=g).to(w_dtype)
    w = w_big[:, 3:3 + n_in]  # rows further apart than `in`: read in place
    b = torch.randn(n_out, generator=g, dtype=torch.float64)  # any float dtype, added as float32
    check(extension.linear(x, w, b.float()), x, w, b.float())
    assert torch.equal(extension.linear(x, w, b), extension.linear(x, w, b.float()))
    wt = torch.randn(n_in, n_out, generator=g).to(w_dtype).T  # column-major W: copied once
    check(extension.linear(x.to(torch.bfloat16), wt, None), x.to(torch.bfloat16), wt, None)


@pytest.mark.parametrize("rows", [1, 2, 9, 130])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_input_is_cast_to_weight_dtype_and_product_not_rounded(extension, rows, w_dtype):
    # x = nonzero integer + 2^-12: the fraction survives in float32, not in bf16 (8 bits). Integer weights keep
    # every partial sum an integer below 2^16, exact in float32; sums above 256 are not bf16 numbers,
    # so a kernel that rounded x·Wᵀ to bf16 would miss them.
    g = torch.Generator().manual_seed(rows)
    signs = torch.randint(0, 2, (rows, 33), generator=g).double() * 2 - 1
    ints = torch.randint(1, 41, (rows, 33), generator=g).double() * signs
    x = (ints + 2.0 ** -12).float()
    w = torch.randint(-9, 10, (11, 33), generator=g).to(w_dtype)
    b = torch.randn(11, generator=g)  # not bf16-representable: must be added in float32
    x_cast = ints + 2.0 ** -12 if w_dtype == torch.float32 else ints  # what x becomes in W's dtype
    exact = x_cast @ w.double().T
    assert torch.equal(extension.linear(x, w), exact.float())
    assert torch.equal(extension.linear(x, w, b), exact.float() + b)
    if w_dtype == torch.bfloat16:
        assert (exact.abs() > 256).any() and not torch.equal(exact.to(torch.bfloat16).double(), exact)


def test_empty_and_zero_width(extension):
    w, b = torch.randn(4, 0), torch.randn(4)
    assert torch.equal(extension.linear(torch.randn(3, 0), w, b), b.expand(3, 4))  # no terms: just the bias
    assert extension.linear(torch.randn(0, 5), torch.randn(4, 5), None).shape == (0, 4)
    assert extension.linear(torch.randn(2, 5), torch.randn(0, 5), None).shape == (2, 0)


@pytest.mark.parametrize("rows", [1, 2, 3, 130])
def test_two_threads_match_one(extension, rows, intra_op_threads):
    # Output rows are split between threads; each one's sum is computed the same way either way.
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 300, generator=g), torch.randn(3001, 300, generator=g).to(torch.bfloat16)
    one = extension.linear(x, w, None)
    with intra_op_threads(2):
        two = extension.linear(x, w, None)
    if rows <= 3:  # the streaming kernel: the same sums in the same order, whichever thread does them
        assert torch.equal(one, two)
    check(two, x, w, None)


def test_opcheck(extension):
    g = torch.Generator().manual_seed(0)
    samples = [
        (torch.randn(3, 17, generator=g), torch.randn(5, 17, generator=g), torch.randn(5, generator=g)),
        (torch.randn(2, 3, 9, generator=g).to(torch.bfloat16), torch.randn(4, 9, generator=g).to(torch.bfloat16),
         None),
        (torch.randn(20, 33, generator=g), torch.randn(7, 33, generator=g).to(torch.bfloat16),
         torch.randn(7, generator=g).to(torch.bfloat16)),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.gptoss.linear.default, args)


@pytest.mark.parametrize("x, w, b, message", [
    (torch.randn(2, 4), torch.randn(4), None, "weight must have 2 dims"),
    (torch.randn(2, 4), torch.randn(3, 4).half(), None, "weight must be float32 or bfloat16"),
    (torch.randn(2, 5), torch.randn(3, 4), None, "x rows have 5 entries but weight has 4 columns"),
    (torch.randn(2, 4), torch.randn(3, 4), torch.randn(2), "bias has 2 entries but weight has 3 rows"),
    (torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 1), "bias must have 1 dims"),
    (torch.ones(2, 4, dtype=torch.int32), torch.randn(3, 4), None, "x must be a floating-point tensor"),
    (torch.randn(2, 4), torch.randn(3, 4), torch.ones(3, dtype=torch.int64), "bias must be a floating-point"),
])
def test_bad_input_names_the_tensor(extension, x, w, b, message):
    with pytest.raises(RuntimeError, match=message):
        extension.linear(x, w, b)
