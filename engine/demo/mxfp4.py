"""Float weights to MXFP4, as the trainer needs it: rounding with a straight-through gradient
(quantization-aware training) and packing into the checkpoint's blocks and scales.

Per block of 32 values along the last axis the scale is the smallest power of two 2^e with
max|w| / 2^e <= 6 (the largest FP4 magnitude), so nothing is clipped; each value then rounds to the
nearest FP4 value times 2^e. `pack` writes exactly what `engine.ops.reference.mxfp4_dequantize` reads
back: the rounded values, bit for bit.
"""

from __future__ import annotations

import torch

from engine.ops.reference import FP4_VALUES

BLOCK = 32
_MAGNITUDES = torch.tensor(FP4_VALUES[:8])
_MIDPOINTS = (_MAGNITUDES[1:] + _MAGNITUDES[:-1]) / 2
_E8M0_BIAS = 127


def _scale_exponents(blocks: torch.Tensor) -> torch.Tensor:
    """blocks [..., nb, 32] -> e [..., nb] with max|w| / 2^e <= 6 (clamped to E8M0's range)."""
    amax = blocks.abs().amax(dim=-1)
    e = torch.ceil(torch.log2(amax.clamp_min(2.0 ** -126) / 6.0))
    return e.clamp(-_E8M0_BIAS, _E8M0_BIAS)


def _round(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [..., n] (n a multiple of 32) -> (magnitude index [..., nb, 32], negative [..., nb, 32], e [..., nb])."""
    blocks = w.detach().float().reshape(*w.shape[:-1], -1, BLOCK)  # [..., nb, 32]
    e = _scale_exponents(blocks)
    scaled = blocks / torch.exp2(e).unsqueeze(-1)
    index = torch.bucketize(scaled.abs(), _MIDPOINTS.to(w.device))  # ties go to the smaller magnitude
    return index, scaled < 0, e


def fake_quantize(w: torch.Tensor) -> torch.Tensor:
    """w rounded to MXFP4 in the forward pass; the gradient passes straight through to w."""
    index, negative, e = _round(w)
    values = _MAGNITUDES.to(w.device)[index] * torch.exp2(e).unsqueeze(-1)
    values = torch.where(negative, -values, values).reshape(w.shape)
    return w + (values - w).detach()


def pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., n] -> (blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]): element 2j in the low
    nibble of byte j, 2j+1 in its high nibble; nibble bit 3 the sign."""
    index, negative, e = _round(w)
    nibbles = (index + 8 * (negative & (index > 0))).to(torch.uint8)  # [..., nb, 32]
    blocks = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # [..., nb, 16]
    return blocks, (e + _E8M0_BIAS).to(torch.uint8)
