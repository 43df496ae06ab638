"""C++ rms_norm against the reference: same numbers to float32 rounding, opcheck."""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference


@pytest.mark.parametrize("shape", [(1, 64), (7, 97), (3, 5, 2880), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(extension, shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    scale = torch.randn(shape[-1], generator=g)
    got, want = extension.rms_norm(x, scale, 1e-5), reference.rms_norm(x, scale, 1e-5)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    # Both compute in float32 (different summation order): a few float32 ulps, then the same rounding.
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7  # one bf16 ulp at |y| < 2 where ties round apart
    assert ((got.float() - want.float()).abs() <= tolerance * want.float().abs().clamp(min=1)).all()


def test_opcheck(extension):
    x, scale = torch.randn(4, 33), torch.randn(33)
    torch.library.opcheck(torch.ops.gptoss.rms_norm.default, (x, scale, 1e-5))


def test_bad_input_names_the_tensor(extension):
    with pytest.raises(RuntimeError, match="scale has 3 entries but x rows have 4"):
        extension.rms_norm(torch.randn(2, 4), torch.randn(3), 1e-5)
