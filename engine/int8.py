"""8-bit weights in llama.cpp's Q8_0 layout: int8 values and one float16 scale per block of 32.

quantize_q8_0 follows Q8_0's rule exactly, so that our int8 mode and llama.cpp's Q8_0 files carry
the same error: d = max|w| / 127 over the block, q = round(w / d) (halves away from zero), and d is
stored as float16 (the division uses the unrounded d, as llama.cpp's quantize_row_q8_0 does).
"""

from __future__ import annotations

import torch

Q8_BLOCK = 32
# ggml's block_q8_0, as GGUF files store Q8_0: the float16 scale d, then the block's 32 int8 values.
GGML_Q8_0_BYTES = 2 + Q8_BLOCK


def quantize_q8_0(weight: torch.Tensor, rows_per_chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] (in a multiple of 32) -> (int8 [out, in], float16 scales [out, in/32]).
    The PyTorch twin of the op `ops.quantize_q8_0` (the C++ kernel gives the same bits). Works through
    `rows_per_chunk` rows at a time so that no float32 copy of a large matrix is made.

    Raises:
        ValueError: not a matrix, or rows that do not split into blocks of 32.
    """
    if weight.dim() != 2 or weight.shape[1] % Q8_BLOCK:
        raise ValueError(f"Q8_0 needs a matrix whose rows split into blocks of {Q8_BLOCK}, got shape "
                         f"{tuple(weight.shape)}")
    rows, cols = weight.shape
    q = torch.empty((rows, cols), dtype=torch.int8, device=weight.device)
    d = torch.empty((rows, cols // Q8_BLOCK), dtype=torch.float16, device=weight.device)
    for start in range(0, rows, rows_per_chunk):
        blocks = weight[start:start + rows_per_chunk].float().reshape(-1, cols // Q8_BLOCK, Q8_BLOCK)
        scale = blocks.abs().amax(dim=-1) / 127  # [r, nb]
        inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
        scaled = blocks * inverse.unsqueeze(-1)
        q[start:start + rows_per_chunk] = _round_half_away(scaled).reshape(-1, cols).to(torch.int8)
        d[start:start + rows_per_chunk] = scale.to(torch.float16)
    return q, d


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf, exactly: floor(|x| + 0.5) would round 0.49999997 up, as that sum rounds to 1 in float32."""
    whole = x.trunc()
    return whole + x.sign() * ((x - whole).abs() >= 0.5)  # x - trunc(x) is exact


def dequantize_q8_0(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(int8 [out, in], float16 [out, in/32]) -> float32 [out, in]."""
    return (q.float().reshape(q.shape[0], -1, Q8_BLOCK) * d.float().unsqueeze(-1)).reshape(q.shape)


def split_ggml_q8_0(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's Q8_0 blocks uint8 [rows, in/32, 34] -> this module's layout (int8 [rows, in], float16
    [rows, in/32]): the same numbers, values and scales copied apart; nothing is rounded."""
    rows, nb, _ = blocks.shape
    scales = blocks[..., :2].contiguous().view(torch.float16).reshape(rows, nb)  # little-endian, as GGUF
    qweight = blocks[..., 2:].contiguous().view(torch.int8).reshape(rows, nb * Q8_BLOCK)
    return qweight, scales


def dequantize_ggml_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """ggml's Q8_0 blocks uint8 [..., nb, 34] -> float32 [..., nb·32]; exact (int8 × float16 fits float32)."""
    scales = blocks[..., :2].contiguous().view(torch.float16).float()  # [..., nb, 1]
    values = blocks[..., 2:].contiguous().view(torch.int8).float()     # [..., nb, 32]
    return (values * scales).flatten(-2)


def drop_pages(tensor: torch.Tensor) -> None:
    """Gives back the memory pages of a CPU tensor that is no longer used (Linux madvise DONTNEED on
    the whole pages inside it). For a privately memory-mapped checkpoint the pages are re-read from
    the file if ever touched again; callers must not use the tensor's values afterwards."""
    import ctypes
    import mmap
    import sys

    if tensor.device.type != "cpu" or not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = (start + page - 1) // page * page, end // page * page
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED
