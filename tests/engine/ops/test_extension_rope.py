"""C++ rope_ against reference.rope_: bit for bit (same float32 products and sums, no FMA
contraction), in place on contiguous and strided views, float32 and bfloat16; opcheck; errors."""

from __future__ import annotations

import pytest
import torch

from engine.ops import reference


def rotate_both(extension, q, k, table, pos):
    """(q, k) rotated by the extension and by the reference, each on its own copy of the inputs."""
    q_ref, k_ref = q.clone(), k.clone()
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    assert extension.rope_(q, k, table, pos) is None
    assert q.data_ptr() == q_ptr and k.data_ptr() == k_ptr
    reference.rope_(q_ref, k_ref, table, pos)
    return (q, k), (q_ref, k_ref)


POSITIONS = {
    "from0": [0, 1, 2, 3, 4],
    "offset": [4090, 4091, 4092, 4093, 4094, 4095, 4096],
    "scattered": [5, 3, 100, 4097, 9, 10, 11],  # neither contiguous nor sorted
    "one": [77],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("d", [22, 64, 24, 2])  # d/2 = 11, 1: vector loop plus scalar tail, tail only
def test_bit_exact_with_reference(extension, d, positions, lead, dtype):
    g = torch.Generator().manual_seed(d + len(lead))
    pos = torch.tensor(POSITIONS[positions])
    T = len(pos)
    table = torch.randn(int(pos.max()) + 3, d, generator=g) * 1.5
    q = torch.randn(*lead, T, 6, d, generator=g).to(dtype)
    k = torch.randn(*lead, T, 2, d, generator=g).to(dtype)
    (q, k), (q_ref, k_ref) = rotate_both(extension, q, k, table, pos)
    assert q.dtype == k.dtype == dtype
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref)


def test_contraction_would_be_caught():
    # The bit-exact test has teeth: a fused a·C − b·S (one rounding instead of three, what an FMA
    # gives) differs from the reference on this kind of data.
    g = torch.Generator().manual_seed(0)
    a, b, C, S = (torch.randn(4096, generator=g) for _ in range(4))
    separate = a * C - b * S
    fused = (a.double() * C.double() - (b * S).double()).float()
    assert (fused != separate).sum() > 100


def test_mixed_dtypes_and_int32_positions(extension):
    g = torch.Generator().manual_seed(1)
    pos = torch.tensor([3, 1, 2], dtype=torch.int32)
    table = torch.randn(4, 64, generator=g)
    q = torch.randn(3, 8, 64, generator=g)
    k = torch.randn(3, 1, 64, generator=g).to(torch.bfloat16)
    (q, k), (q_ref, k_ref) = rotate_both(extension, q, k, table, pos)
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_are_rotated_in_place(extension, dtype):
    # q and k as views of one fused projection output [B, T, (H + 2K)·Dh] (not contiguous): only
    # their elements change, v's stay as they were.
    B, T, H, K, Dh = 2, 5, 4, 2, 64
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, (H + 2 * K) * Dh, generator=g).to(dtype)
    expected = qkv.clone()
    table = torch.randn(40, Dh, generator=g)
    pos = torch.tensor([30, 2, 7, 8, 39])
    q = qkv[..., :H * Dh].view(B, T, H, Dh)
    k = qkv[..., H * Dh:(H + K) * Dh].view(B, T, K, Dh)
    assert not q.is_contiguous() and not k.is_contiguous()
    extension.rope_(q, k, table, pos)
    reference.rope_(expected[..., :H * Dh].view(B, T, H, Dh), expected[..., H * Dh:(H + K) * Dh].view(B, T, K, Dh),
                    table, pos)
    assert torch.equal(qkv, expected)


def test_transposed_and_strided_last_dim(extension):
    # A head-major buffer seen as [B, T, H, Dh], and a view whose last dim has stride 2.
    B, T, H, K, Dh = 2, 6, 3, 1, 24
    g = torch.Generator().manual_seed(3)
    table = torch.randn(10, Dh, generator=g)
    pos = torch.tensor([9, 0, 4, 5, 1, 3])
    q_buf = torch.randn(B, H, T, Dh, generator=g)
    k_buf = torch.randn(B, T, K, Dh, 2, generator=g)
    q_want, k_want = q_buf.transpose(1, 2).clone(), k_buf[..., 0].clone()
    other = k_buf[..., 1].clone()
    reference.rope_(q_want, k_want, table, pos)
    extension.rope_(q_buf.transpose(1, 2), k_buf[..., 0], table, pos)
    assert torch.equal(q_buf.transpose(1, 2), q_want)
    assert torch.equal(k_buf[..., 0], k_want)
    assert torch.equal(k_buf[..., 1], other)  # the interleaved elements are untouched


def test_opcheck(extension):
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 3, 2, 16, generator=g)
    torch.library.opcheck(torch.ops.gptoss.rope_.default, (q, k, torch.randn(8, 16, generator=g),
                                                           torch.tensor([7, 0, 3])))


def test_bad_input_names_the_tensor(extension):
    q, k, table = torch.randn(3, 4, 16), torch.randn(3, 2, 16), torch.randn(8, 16)
    rope = extension.rope_
    with pytest.raises(RuntimeError, match=r"positions\[1\] = 8 is out of range for cos_sin with 8 rows"):
        rope(q, k, table, torch.tensor([0, 8, 1]))
    with pytest.raises(RuntimeError, match=r"positions\[2\] = -1 is out of range"):
        rope(q, k, table, torch.tensor([0, 1, -1]))
    with pytest.raises(RuntimeError, match="q has 3 tokens .* but positions has 2"):
        rope(q, k, table, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="k has head dim 12 but cos_sin rows have 16 entries"):
        rope(q, k[..., :12], table, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="cos_sin must be Float"):
        rope(q, k, table.double(), torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="positions must be int64 or int32"):
        rope(q, k, table, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(RuntimeError, match="q must be float32 or bfloat16, got Half"):
        rope(q.half(), k, table, torch.tensor([0, 1, 2]))
    q0 = q.clone()
    with pytest.raises(RuntimeError, match="k must be float32 or bfloat16, got Double"):
        rope(q, k.double(), table, torch.tensor([0, 1, 2]))
    assert torch.equal(q, q0)  # q is not rotated when k is rejected
    with pytest.raises(RuntimeError, match=r"k must be \[.., T, heads, Dh\]"):
        rope(q, k[0], table, torch.tensor([0, 1, 2]))
    # Nothing was rotated by a failed call: the checks run before any write.
    with pytest.raises(RuntimeError, match="out of range"):
        rope(q, k, table, torch.tensor([0, 1, 9]))
    assert torch.equal(q, q0)
