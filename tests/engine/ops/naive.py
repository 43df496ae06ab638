"""Independent decoders written straight from the MXFP4 specification, shared by the op tests.

Nothing here calls engine code: these are the "obviously correct" definitions the reference ops are
checked against. `decode_loop` is the literal per-element definition; `decode_f64` is the same rule
written with tensor indexing (fast enough for expert-sized matrices) and is itself checked against
`decode_loop` in test_mxfp4.py.
"""

from __future__ import annotations

import torch

# float32 machine epsilon (spacing of floats at 1.0) = 2·u, u = 2^-24 the unit roundoff.
EPS32 = torch.finfo(torch.float32).eps
U32 = EPS32 / 2
U_BF16 = torch.finfo(torch.bfloat16).eps / 2  # 2^-9: relative error of one rounding to bfloat16

# FP4 E2M1 nibble -> value, from the specification table.
FP4 = (+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def decode_loop(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks [..., nb, 16] uint8, scales [..., nb] uint8 -> [..., nb·32] float64, one element at a time."""
    lead, nb = blocks.shape[:-2], blocks.shape[-2]
    rows_b = blocks.reshape(-1, nb, 16).tolist()
    rows_s = scales.reshape(-1, nb).tolist()
    out = []
    for row_b, row_s in zip(rows_b, rows_s):
        row = []
        for c in range(nb * 32):
            b, j = c // 32, (c % 32) // 2
            byte = row_b[b][j]
            nibble = byte & 0x0F if c % 2 == 0 else byte >> 4
            row.append(FP4[nibble] * 2.0 ** (row_s[b] - 127))  # exact in float64 (and keeps -0.0)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(*lead, nb * 32)


def decode_f64(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Same rule as decode_loop, vectorised by indexing each logical element c directly."""
    nb = blocks.shape[-2]
    c = torch.arange(nb * 32)
    b, j, odd = c // 32, (c % 32) // 2, (c % 2).bool()
    byte = blocks[..., b, j].long()  # [..., nb·32]: the byte holding element c
    nibble = torch.where(odd, byte >> 4, byte & 0x0F)
    values = torch.tensor(FP4, dtype=torch.float64)[nibble]
    return torch.ldexp(values, scales[..., b].long() - 127)  # x·2^e, exact
