"""C++ linear and mxfp4_dequantize against float64 truth and the reference; opcheck."""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

FLOAT32_EPS = 2.0 ** -24


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17, 130])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_float64_of_the_same_inputs(extension, rows, weight_dtype, bias):
    g = torch.Generator().manual_seed(rows * 7 + bias)
    n_in, n_out = 97, 45
    x = torch.randn(rows, n_in, generator=g)
    weight = torch.randn(n_out, n_in, generator=g).to(weight_dtype)
    b = torch.randn(n_out, generator=g) if bias else None
    got = extension.linear(x, weight, b)
    # Truth: x rounded to the weight's dtype (the op's contract), then exact float64 products.
    truth = x.to(weight_dtype).double() @ weight.double().T + (b.double() if bias else 0)
    magnitude = x.to(weight_dtype).double().abs() @ weight.double().abs().T
    # Float32 accumulation over n_in terms in any order: |error| <= n_in·eps·Σ|x||w| (plus the bias add).
    bound = n_in * FLOAT32_EPS * (magnitude + (b.double().abs() if bias else 0)) + 1e-30
    assert got.dtype == torch.float32 and got.shape == (rows, n_out)
    assert ((got.double() - truth).abs() <= bound).all()
    want = reference.linear(x, weight, b).double()
    # The reference rounds bf16 products to bf16 (half an ulp = 2^-9 relative); float32 weights agree closely.
    relative = 2.0 ** -8 if weight_dtype == torch.bfloat16 else 2 * n_in * FLOAT32_EPS
    assert ((got.double() - want).abs() <= relative * (magnitude + 1)).all()


def test_linear_leading_dims_and_non_contiguous_input(extension):
    x = torch.randn(3, 2, 64).transpose(0, 1)  # [2, 3, 64], not contiguous
    weight = torch.randn(33, 64).bfloat16()
    got = extension.linear(x, weight, None)
    assert got.shape == (2, 3, 33)
    torch.testing.assert_close(got, x.bfloat16().float() @ weight.float().T, rtol=1e-5, atol=1e-4)


def test_mxfp4_dequantize_is_bit_exact(extension):
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 5), (2, 1, 7), (1,)]:
        blocks = torch.randint(0, 256, (*shape, 16), generator=g, dtype=torch.uint8)
        scales = torch.randint(100, 140, shape, generator=g, dtype=torch.uint8)
        for dtype in (torch.float32, torch.bfloat16):
            got = extension.mxfp4_dequantize(blocks, scales, dtype)
            want = reference.mxfp4_dequantize(blocks, scales, dtype)
            assert got.dtype == dtype and torch.equal(got, want)
            assert torch.equal(torch.signbit(got), torch.signbit(want))  # -0.0 kept


def test_opcheck(extension):
    torch.library.opcheck(torch.ops.gptoss.linear.default, (torch.randn(3, 32), torch.randn(8, 32).bfloat16(),
                                                            torch.randn(8)))
    torch.library.opcheck(torch.ops.gptoss.mxfp4_dequantize.default,
                          (torch.randint(0, 256, (4, 2, 16), dtype=torch.uint8),
                           torch.full((4, 2), 127, dtype=torch.uint8), torch.bfloat16))


def test_bad_input_names_the_tensor(extension):
    with pytest.raises(RuntimeError, match="weight"):
        extension.linear(torch.randn(2, 5), torch.randn(3, 4), None)
