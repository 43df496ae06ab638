"""Pure-PyTorch implementation of every op: the executable spec the C++/CUDA kernels are tested against.

Shape legend: B batch, T query tokens, S keys, H query heads, K kv heads, G = H/K, Dh head dim,
N tokens (flattened B*T), D hidden size, E experts, A experts per token, I expert width.

Numerics: reductions, softmax, norms, rotations and SwiGLU run in float32. Matrix products take
their inputs in the weight's dtype (bfloat16 or float32) and return float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.int8 import dequantize_q8_0, quantize_q8_0  # noqa: F401 (quantize_q8_0 is this backend's op)

# FP4 E2M1 values by nibble: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa.
FP4_VALUES = (+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_E8M0_BIAS = 127
# Keep the [.., T, S] score tile of the reference attention to about this many float32 values.
_SCORE_TILE_ELEMENTS = 1 << 24


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x·Wᵀ + b, with x cast to W's dtype; returns float32. x [..., in], W [out, in], b [out]."""
    y = F.linear(x.to(weight.dtype), weight).float()
    return y if bias is None else y + bias


def linear_q8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x·Wᵀ + b in float32 with W in Q8_0's layout (engine.int8): W[j, k] = qweight[j, k]·scales[j, k/32];
    x used in float32. x [..., in], qweight int8 [out, in], scales float16 [out, in/32]."""
    y = F.linear(x.float(), dequantize_q8_0(qweight, scales))
    return y if bias is None else y + bias.float()


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) · scale over the last axis, in float32; returns x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * scale.float()
    return y.to(x.dtype)


def rope_(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    """Rotates q [..., T, H, Dh] and k [..., T, K, Dh] in place, half-split (NeoX) pairing.

    cos_sin [P, Dh] float32 holds c·cos(p·ω) in its first half and c·sin(p·ω) in its second half
    (c is the YaRN attention factor); row p is used for a token at absolute position p.
    """
    half = cos_sin.shape[-1] // 2
    table = cos_sin[positions].unsqueeze(-2)  # [T, 1, Dh]: broadcast over heads
    cos, sin = table[..., :half], table[..., half:]
    for x in (q, k):
        a, b = x[..., :half].float(), x[..., half:].float()
        rotated = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
        x.copy_(rotated)


def sdpa_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, sm_scale: float,
               sliding_window: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with a learned sink logit per query head and an optional window.

    Key s is visible to query t iff 0 <= k_pos[s] <= q_pos[t] and, when sliding_window > 0,
    q_pos[t] - k_pos[s] < sliding_window (the window counts the query's own position). The sink
    S_h joins the softmax denominator as a logit already in score units (not scaled by sm_scale)
    and carries no value. Keys may come in any order (ring buffers); k_pos = -1 marks an empty slot.

    Args:
        q: [B, T, H, Dh]; query head h uses kv head h // G.
        k, v: [B, K, S, Dh].
        sinks: [H].
        q_pos: [T] and k_pos: [S] absolute positions (int64).
    Returns:
        [B, T, H, Dh] float32.
    """
    B, T, H, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    qg = q.float().reshape(B, T, K, G, Dh).permute(0, 2, 3, 1, 4)  # [B, K, G, T, Dh]
    kf = k.float().unsqueeze(2)  # [B, K, 1, S, Dh]
    vf = v.float().unsqueeze(2)
    sink = sinks.float().reshape(1, K, G, 1, 1)
    out = torch.empty(B, K, G, T, Dh, dtype=torch.float32, device=q.device)
    tile = max(1, _SCORE_TILE_ELEMENTS // max(1, B * H * S))
    for t0 in range(0, T, tile):
        t1 = min(T, t0 + tile)
        scores = (qg[:, :, :, t0:t1] @ kf.transpose(-1, -2)) * sm_scale  # [B, K, G, t, S]
        qp, kp = q_pos[t0:t1, None], k_pos[None, :]
        visible = (kp >= 0) & (kp <= qp)
        if sliding_window > 0:
            visible &= qp - kp < sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        logits = torch.cat((scores, sink.expand(B, K, G, t1 - t0, 1)), dim=-1)
        weights = torch.softmax(logits, dim=-1)[..., :S]  # drop the sink column: it has no value
        out[:, :, :, t0:t1] = weights @ vf
    return out.permute(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def sdpa_sinks_varlen(q: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor], sinks: torch.Tensor,
                      sm_scale: float, sliding_window: int, q_pos: torch.Tensor, k_pos: list[torch.Tensor],
                      q_lengths: list[int]) -> torch.Tensor:
    """sdpa_sinks for several sequences in one call, each against its own keys.

    Args:
        q: [T, H, Dh], the query tokens of len(q_lengths) sequences back to back (q_lengths sum to T).
        k, v: per sequence [K, S_i, Dh].
        q_pos: [T]; k_pos: per sequence [S_i].
    Returns:
        [T, H, Dh] float32: sequence i's rows as sdpa_sinks gives them for it alone.
    """
    if len(k) != len(q_lengths) or len(v) != len(q_lengths) or len(k_pos) != len(q_lengths):
        raise ValueError(f"k, v and k_pos must have one entry per sequence ({len(q_lengths)} q_lengths), "
                         f"got {len(k)}, {len(v)} and {len(k_pos)}")
    if sum(q_lengths) != q.shape[0]:
        raise ValueError(f"q_lengths sum to {sum(q_lengths)} but q has {q.shape[0]} tokens")
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    start = 0
    for ki, vi, pi, n in zip(k, v, k_pos, q_lengths):
        out[start:start + n] = sdpa_sinks(q[None, start:start + n], ki[None], vi[None], sinks, sm_scale,
                                          sliding_window, q_pos[start:start + n], pi)[0]
        start += n
    return out


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Decodes MXFP4: blocks [..., nb, 16] uint8 and E8M0 scales [..., nb] -> [..., nb·32] in dtype.

    Byte j of a block holds element 2j in its low nibble and element 2j+1 in its high nibble; the
    block's 32 values share the multiplier 2^(scale − 127). Exact in bfloat16 and float32.
    """
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    pairs = torch.stack((lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]), dim=-1)  # [..., nb, 16, 2]
    values = pairs.reshape(*blocks.shape[:-1], 32)  # [..., nb, 32]
    multipliers = torch.exp2(scales.float() - _E8M0_BIAS).unsqueeze(-1)
    return (values * multipliers).reshape(*blocks.shape[:-2], -1).to(dtype)


def ggml_mxfp4_dequantize(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Decodes ggml's MXFP4 (GGUF files): blocks [..., nb, 17] uint8 -> [..., nb·32] in dtype.

    Each block is its E8M0 scale byte, then 16 bytes whose byte j holds element j in its low nibble
    and element j+16 in its high nibble. (ggml tabulates doubled FP4 values and halves the scale:
    the same products as 2^(scale − 127) · FP4.)
    """
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    nibbles = blocks[..., 1:]
    values = torch.cat((lut[(nibbles & 0x0F).long()], lut[(nibbles >> 4).long()]), dim=-1)  # [..., nb, 32]
    multipliers = torch.exp2(blocks[..., 0].float() - _E8M0_BIAS).unsqueeze(-1)
    return (values * multipliers).reshape(*blocks.shape[:-2], -1).to(dtype)


def swiglu(h: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss clamped SwiGLU on interleaved rows: [..., 2I] -> [..., I], in float32."""
    gate, up = h[..., 0::2].float(), h[..., 1::2].float()
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_mxfp4(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
              w1_blocks: torch.Tensor, w1_scales: torch.Tensor, b1: torch.Tensor,
              w2_blocks: torch.Tensor, w2_scales: torch.Tensor, b2: torch.Tensor,
              swiglu_alpha: float, swiglu_limit: float) -> torch.Tensor:
    """Mixture of MXFP4 experts: Σ_a w[n,a] · (W2[e]·swiglu(W1[e]·x[n] + b1[e]) + b2[e]), e = ids[n,a].

    Experts are decoded one at a time into x's dtype (the compute dtype), so memory holds at most
    one dequantised expert.

    Args:
        x: [N, D] in the compute dtype. expert_ids: [N, A] int. expert_weights: [N, A] float32.
        w1_blocks: [E, 2I, D/32, 16], w1_scales: [E, 2I, D/32], b1: [E, 2I] (gate/up interleaved).
        w2_blocks: [E, D, I/32, 16], w2_scales: [E, D, I/32], b2: [E, D].
    Returns:
        [N, D] float32.
    """
    return moe(x, expert_ids, expert_weights,
               lambda e: mxfp4_dequantize(w1_blocks[e], w1_scales[e], x.dtype), b1,  # [2I, D]
               lambda e: mxfp4_dequantize(w2_blocks[e], w2_scales[e], x.dtype), b2,  # [D, I]
               swiglu_alpha, swiglu_limit)


def moe_mxfp4_ggml(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
                   gate: torch.Tensor, up: torch.Tensor, b1: torch.Tensor, down: torch.Tensor, b2: torch.Tensor,
                   swiglu_alpha: float, swiglu_limit: float) -> torch.Tensor:
    """moe_mxfp4 on a GGUF's experts as stored: ggml's MXFP4 blocks (ggml_mxfp4_dequantize) gate and
    up [E, I, D/32, 17] (W1's rows 2i and 2i+1 are gate row i and up row i), down [E, D, I/32, 17];
    b1 [E, 2I] gate/up interleaved, b2 [E, D]. Returns [N, D] float32."""
    def w1_of(e: int) -> torch.Tensor:  # [2I, D]
        rows = (ggml_mxfp4_dequantize(gate[e], x.dtype), ggml_mxfp4_dequantize(up[e], x.dtype))  # 2 × [I, D]
        return torch.stack(rows, dim=1).flatten(0, 1)

    return moe(x, expert_ids, expert_weights, w1_of, b1,
               lambda e: ggml_mxfp4_dequantize(down[e], x.dtype), b2, swiglu_alpha, swiglu_limit)  # [D, I]


def moe(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
        w1_of: Callable[[int], torch.Tensor], b1: torch.Tensor, w2_of: Callable[[int], torch.Tensor],
        b2: torch.Tensor, swiglu_alpha: float, swiglu_limit: float) -> torch.Tensor:
    """The mixture of experts with each expert's weights from a function (w1_of(e) [2I, D], w2_of(e)
    [D, I]): moe_mxfp4's arithmetic, shared with the demo model's trainer, which passes float weights
    rounded to MXFP4 and needs gradients. Returns [N, D] float32."""
    out = torch.zeros(x.shape[0], b2.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(expert_ids).tolist():
        tokens, slots = (expert_ids == e).nonzero(as_tuple=True)
        h = linear(x[tokens], w1_of(e), b1[e].float())
        act = swiglu(h, swiglu_alpha, swiglu_limit)
        y = linear(act, w2_of(e), b2[e].float())
        out = out.index_add(0, tokens, y * expert_weights[tokens, slots].float().unsqueeze(-1))
    return out
