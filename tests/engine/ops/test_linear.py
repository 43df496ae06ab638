"""reference.linear: y = x·Wᵀ + b with x cast to W's dtype, returned in float32."""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import U32, U_BF16


def naive_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 x·Wᵀ + b one output at a time, and Σ_k |x_k·W_jk| (+ |b_j|), the error scale."""
    x, w = x.double().reshape(-1, x.shape[-1]), w.double()
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float64)
    mag = torch.empty_like(out)
    for j in range(w.shape[0]):
        out[:, j] = (x * w[j]).sum(-1)
        mag[:, j] = (x * w[j]).abs().sum(-1)
    if b is not None:
        out += b.double()
        mag += b.double().abs()
    return out, mag


SHAPES = [((1,), 1, 1), ((7,), 45, 33), ((3, 5), 97, 19), ((2, 1, 3), 160, 7)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead, n_in, n_out", SHAPES)
def test_float32_weight(lead, n_in, n_out, x_dtype, bias):
    g = torch.Generator().manual_seed(n_in * 3 + n_out)
    x = torch.randn(*lead, n_in, generator=g).to(x_dtype)
    w = torch.randn(n_out, n_in, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    got = reference.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (*lead, n_out)
    want, mag = naive_linear(x, w, b)  # a bf16 x converts to float32 exactly
    # Any order of n_in products and sums plus the bias add: |err| ≤ (n_in + 1)·u·Σ|terms| (Higham, γ_n).
    tol = (n_in + 1) * U32 * mag
    assert ((got.reshape(-1, n_out).double() - want).abs() <= tol).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead, n_in, n_out", SHAPES)
def test_bfloat16_weight(lead, n_in, n_out, bias):
    g = torch.Generator().manual_seed(n_in * 5 + n_out)
    x = torch.randn(*lead, n_in, generator=g)  # float32: the op rounds it to bf16 first
    w = torch.randn(n_out, n_in, generator=g).to(torch.bfloat16)
    b = torch.randn(n_out, generator=g) if bias else None
    got = reference.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (*lead, n_out)
    prod, mag = naive_linear(x.to(torch.bfloat16), w, None)
    want = prod + (b.double() if bias else 0)
    # CPU bf16 GEMMs accumulate in float32 ((n_in + 1)·u·Σ|terms|) and round the result once to bf16
    # (≤ u_bf16·|x·Wᵀ|); then comes the float32 bias add (u·|y|).
    tol = U_BF16 * prod.abs() + (n_in + 1) * U32 * mag * (1 + U_BF16) + U32 * want.abs()
    assert ((got.reshape(-1, n_out).double() - want).abs() <= tol).all()


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_input_is_cast_to_weight_dtype_exactly(w_dtype):
    # Nonzero integers |i| ≤ 4 plus 2^-12: the fraction survives in float32 but not in bf16 (8 bits), and with
    # integer weights every sum below stays an integer ≤ 15·4·2 = 120, exact in both dtypes.
    g = torch.Generator().manual_seed(0)
    ints = torch.randint(1, 5, (6, 15), generator=g).double() * (torch.randint(0, 2, (6, 15), generator=g) * 2 - 1)
    x = (ints + 2.0 ** -12).float()
    w = torch.randint(-2, 3, (9, 15), generator=g).to(w_dtype)
    b = torch.randn(9, generator=g)  # not bf16-representable: must be added in float32
    got = reference.linear(x, w, b)
    x_cast = ints + 2.0 ** -12 if w_dtype == torch.float32 else ints  # what x becomes in W's dtype
    want = (x_cast @ w.double().T).float() + b
    assert torch.equal(got, want)
    assert torch.equal(reference.linear(x, w), (x_cast @ w.double().T).float())
