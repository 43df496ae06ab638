"""C++ mxfp4_dequantize: bit-identical to the reference and to the per-element decoder, in float32 and
bfloat16 (every MXFP4 value is exact in both, so equality is the only right answer), opcheck, errors."""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.naive import decode_f64, decode_loop

DTYPES = [torch.float32, torch.bfloat16]


def assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(torch.signbit(got), torch.signbit(want))  # -0.0 stays -0.0


def random_case(lead, nb, seed, low=0, high=255):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*lead, nb, 16), generator=g).to(torch.uint8)
    scales = torch.randint(low, high, (*lead, nb), generator=g).to(torch.uint8)
    return blocks, scales


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead, nb", [((), 1), ((7,), 3), ((3, 5), 3), ((2, 1, 3), 5), ((5,), 90)])
def test_matches_naive_decoder_and_reference(extension, dtype, lead, nb):
    blocks, scales = random_case(lead, nb, seed=nb + len(lead), low=127 - 40, high=127 + 40)
    got = extension.mxfp4_dequantize(blocks, scales, dtype)
    assert_identical(got, decode_loop(blocks, scales).to(dtype))
    assert_identical(got, reference.mxfp4_dequantize(blocks, scales, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_byte_at_every_scale(extension, dtype):
    # Each of the scale bytes 0..254 (2^-127 .. 2^127: subnormals at the bottom, ±inf for |v| ≥ 2 at the
    # top) decodes one 16-block row holding all 256 byte values.
    scales = torch.arange(255).to(torch.uint8).reshape(255, 1).expand(255, 16).contiguous()
    blocks = torch.arange(256).to(torch.uint8).reshape(1, 16, 16).expand(255, 16, 16).contiguous()
    got = extension.mxfp4_dequantize(blocks, scales, dtype)
    assert_identical(got, decode_f64(blocks, scales).to(dtype))
    assert_identical(got, reference.mxfp4_dequantize(blocks, scales, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_two_threads_and_strided_input(extension, dtype, intra_op_threads):
    # More blocks than one task takes, split between two threads; the inputs are strided views.
    blocks, scales = random_case((3, 2), 2 * 2111, seed=7)
    blocks, scales = blocks[:, ::2], scales[:, ::2]  # [3, 1, 4222, 16] and [3, 1, 4222], not contiguous
    assert not blocks.is_contiguous() and not scales.is_contiguous()
    with intra_op_threads(2):
        got = extension.mxfp4_dequantize(blocks, scales, dtype)
    assert_identical(got, decode_f64(blocks, scales).to(dtype))


def test_no_blocks(extension):
    blocks, scales = torch.zeros(3, 0, 16, dtype=torch.uint8), torch.zeros(3, 0, dtype=torch.uint8)
    assert extension.mxfp4_dequantize(blocks, scales, torch.bfloat16).shape == (3, 0)


def test_opcheck(extension):
    for lead, nb, dtype in [((), 2, torch.float32), ((3, 2), 3, torch.bfloat16), ((4,), 1, torch.float32)]:
        blocks, scales = random_case(lead, nb, seed=nb, low=100, high=150)
        torch.library.opcheck(torch.ops.gptoss.mxfp4_dequantize.default, (blocks, scales, dtype))


U8 = torch.uint8


@pytest.mark.parametrize("blocks, scales, dtype, message", [
    (torch.zeros(2, 16, dtype=torch.int32), torch.zeros(2, dtype=U8), torch.float32, "blocks must be Byte"),
    (torch.zeros(2, 16, dtype=U8), torch.zeros(2, dtype=torch.int64), torch.float32, "scales must be Byte"),
    (torch.zeros(2, 15, dtype=U8), torch.zeros(2, dtype=U8), torch.float32, r"blocks must have shape \[..., nb, 16\]"),
    (torch.zeros(16, dtype=U8), torch.zeros(1, dtype=U8), torch.float32, r"blocks must have shape \[..., nb, 16\]"),
    (torch.zeros(3, 2, 16, dtype=U8), torch.zeros(3, 3, dtype=U8), torch.float32, r"scales must have shape \[3, 2\]"),
    (torch.zeros(2, 16, dtype=U8), torch.zeros(2, dtype=U8), torch.float16, "dtype must be float32 or bfloat16"),
])
def test_bad_input_names_the_tensor(extension, blocks, scales, dtype, message):
    with pytest.raises(RuntimeError, match=message):
        extension.mxfp4_dequantize(blocks, scales, dtype)
