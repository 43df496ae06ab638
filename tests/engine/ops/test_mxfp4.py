"""reference.mxfp4_dequantize against a per-element decoder written from the MXFP4 specification.

Every MXFP4 value (at most 2 significant bits times a power of two) is exactly representable in
bfloat16 and float32 for the scales tested, so all comparisons are exact (torch.equal plus the
sign bit, which torch.equal ignores for zeros).
"""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import FP4, decode_f64, decode_loop

DTYPES = [torch.float32, torch.bfloat16]


def assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(torch.signbit(got), torch.signbit(want))  # -0.0 stays -0.0


def _unit_case(byte: int, scale: int, block: int, j: int, nb: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = torch.zeros(nb, 16, dtype=torch.uint8)
    blocks[block, j] = byte
    return blocks, torch.full((nb,), 127, dtype=torch.uint8).index_fill_(0, torch.tensor([block]), scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("byte, scale, pair", [
    (0x21, 127, (+0.5, +1.0)),   # low nibble 1 -> element 2j, high nibble 2 -> element 2j+1
    (0xF8, 127, (-0.0, -6.0)),   # nibble 8 is negative zero, 15 is -6
    (0x21, 130, (+4.0, +8.0)),   # scale 130 multiplies by 2^3
    (0x7E, 120, (-4.0 / 128, 6.0 / 128)),  # scale 120 divides by 2^7
])
def test_unit_vectors(dtype, byte, scale, pair):
    nb = 3
    for block in range(nb):
        for j in range(16):
            blocks, scales = _unit_case(byte, scale, block, j, nb)
            want = torch.zeros(nb * 32, dtype=dtype)
            c = 32 * block + 2 * j
            want[c], want[c + 1] = pair
            assert_identical(reference.mxfp4_dequantize(blocks, scales, dtype), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [127, 130, 101])
def test_every_byte_value(dtype, scale):
    # 16 blocks of 16 bytes hold all 256 byte values once; expected pairs come from the table directly.
    blocks = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(16, 16)
    scales = torch.full((16,), scale, dtype=torch.uint8)
    want = torch.tensor([v for byte in range(256) for v in (FP4[byte & 15], FP4[byte >> 4])],
                        dtype=torch.float64) * 2.0 ** (scale - 127)
    assert_identical(reference.mxfp4_dequantize(blocks, scales, dtype), want.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead, nb", [((), 1), ((7,), 3), ((3, 5), 3), ((2, 1, 3), 5)])
def test_random_blocks_match_naive_decoder(dtype, lead, nb):
    g = torch.Generator().manual_seed(10 * nb + len(lead))
    blocks = torch.randint(0, 256, (*lead, nb, 16), generator=g).to(torch.uint8)
    scales = torch.randint(127 - 40, 127 + 40, (*lead, nb), generator=g).to(torch.uint8)
    want = decode_loop(blocks, scales)
    assert want.shape == (*lead, nb * 32)
    assert_identical(reference.mxfp4_dequantize(blocks, scales, dtype), want.to(dtype))


def test_full_scale_range_float32():
    # Scale bytes 0..254: 2^-127 .. 2^127. Small ones give float32 subnormals (still exact), the
    # largest overflow to ±inf for |value| >= 2; the expected result is the float64 value rounded.
    scales = torch.arange(255, dtype=torch.int64).to(torch.uint8)
    blocks = torch.arange(256, dtype=torch.int64).to(torch.uint8)[torch.arange(255 * 16) % 256].reshape(255, 16)
    want = decode_loop(blocks, scales).to(torch.float32)
    assert_identical(reference.mxfp4_dequantize(blocks, scales, torch.float32), want)


def test_vectorised_decoder_matches_loop():
    # decode_f64 is what test_moe.py dequantises experts with; pin it to the literal definition.
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (5, 3, 3, 16), generator=g).to(torch.uint8)
    scales = torch.randint(0, 255, (5, 3, 3), generator=g).to(torch.uint8)
    assert_identical(decode_f64(blocks, scales), decode_loop(blocks, scales))
