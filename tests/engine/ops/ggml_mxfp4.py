"""MXFP4 weights rewritten in ggml's layout (GGUF files), for the tests of the ops that read it.

ggml's block_mxfp4 is 17 bytes: the E8M0 scale byte, then 16 bytes whose byte j holds element j in
its low nibble and element j + 16 in its high nibble (the Hugging Face layout: elements 2j and 2j + 1,
scales apart). llama.cpp's converter stores gpt-oss's interleaved gate_up rows as two tensors.
"""

from __future__ import annotations

import torch


def to_ggml(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Hugging Face MXFP4 blocks [..., nb, 16] + scales [..., nb] -> ggml's blocks [..., nb, 17]."""
    nibbles = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).flatten(-2)  # [..., nb, 32]: element order
    packed = nibbles[..., :16] | (nibbles[..., 16:] << 4)
    return torch.cat((scales.unsqueeze(-1), packed), dim=-1).contiguous()


def ggml_args(args: tuple) -> tuple:
    """moe_mxfp4's arguments -> moe_mxfp4_ggml's: W1's even (gate) and odd (up) rows apart."""
    x, ids, w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha, limit = args
    gate = to_ggml(w1_blocks[:, 0::2], w1_scales[:, 0::2])
    up = to_ggml(w1_blocks[:, 1::2], w1_scales[:, 1::2])
    return x, ids, w, gate, up, b1, to_ggml(w2_blocks, w2_scales), b2, alpha, limit
