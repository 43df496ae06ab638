"""reference.rms_norm against a float64 row-by-row evaluation of y = x / sqrt(mean(x²) + eps) · gamma."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import U32


def naive_rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """float64, one row at a time, on the exact values of x and gamma."""
    rows = x.double().reshape(-1, x.shape[-1])
    g = gamma.double()
    out = torch.empty_like(rows)
    for r, row in enumerate(rows):
        mean_square = sum(v * v for v in row.tolist()) / row.numel()
        out[r] = row / math.sqrt(mean_square + eps) * g
    return out.reshape(x.shape)


def _inputs(lead: tuple[int, ...], n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=g)
    # Per-row magnitudes from 1e-4 (mean(x²) far below eps, so eps dominates) to 1e3.
    x = x * torch.logspace(-4, 3, math.prod(lead)).reshape(*lead, 1)
    x.reshape(-1, n)[0] = 0  # an all-zero row must give zeros, not NaN
    gamma = torch.randn(n, generator=g) + 1
    return x.to(dtype), gamma


SHAPES = [((1,), 1), ((4,), 97), ((3, 5), 97), ((2, 3), 2880)]


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize("lead, n", SHAPES)
def test_float32_matches_float64(lead, n, eps):
    x, gamma = _inputs(lead, n, seed=n + len(lead), dtype=torch.float32)
    got = reference.rms_norm(x, gamma, eps)
    want = naive_rms_norm(x, gamma, eps)
    assert got.dtype == torch.float32 and got.shape == x.shape
    # Any summation order: the mean of n rounded squares is within (n+1)·u relatively; rsqrt halves
    # that and adds ~1 ulp; the eps add and the two final products add one rounding each.
    tol = ((n + 1) / 2 + 6) * U32 * want.abs()
    assert ((got.double() - want).abs() <= tol).all()
    assert torch.isfinite(got).all() and (got.reshape(-1, n)[0] == 0).all()


@pytest.mark.parametrize("lead, n", SHAPES)
def test_bfloat16_is_float64_rounded_to_within_one_ulp(lead, n):
    x, gamma = _inputs(lead, n, seed=7 * n, dtype=torch.bfloat16)
    got = reference.rms_norm(x, gamma, 1e-5)
    want = naive_rms_norm(x, gamma, 1e-5)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    # The float32 math is off by < 1e-4 relative (bound above), far below half a bf16 ulp (2^-9), so
    # the one final rounding lands within half a bf16 ulp of the float64 value: allow one full ulp.
    exponent = torch.floor(torch.log2(want.abs().clamp_min(1e-30)))
    ulp = torch.exp2(exponent - 7)  # bfloat16 keeps 8 significant bits
    assert ((got.double() - want).abs() <= ulp).all()
    assert (got.reshape(-1, n)[0] == 0).all()
