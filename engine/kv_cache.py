"""Per-layer key/value caches for incremental decoding.

Full-attention layers keep every position and grow (doubling) with the context; sliding-window
layers keep a ring of exactly `window` entries, so their memory does not grow. Both hand the
attention op the keys together with their absolute positions, which is all the mask needs.

Shapes: keys and values are stored [B, K, S, Dh] (batch, kv heads, slots, head dim).
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig


class ContextLimitError(ValueError):
    """More tokens than the cache may hold; the message gives both numbers."""


class FullAttentionCache:
    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, initial_slots: int = 64):
        self._shape = (batch, kv_heads, head_dim)
        self.k = torch.empty(batch, kv_heads, initial_slots, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor):
        """Stores k/v [B, K, T, Dh] of positions length..length+T-1; returns all keys, values, positions."""
        T = k_new.shape[2]
        end = self.length + T
        if end > self.k.shape[2]:
            self._grow(end)
        self.k[:, :, self.length:end] = k_new
        self.v[:, :, self.length:end] = v_new
        self.length = end
        k_pos = torch.arange(end, device=positions.device)
        return self.k[:, :, :end], self.v[:, :, :end], k_pos

    def _grow(self, needed: int) -> None:
        slots = self.k.shape[2]
        while slots < needed:
            slots *= 2
        k = self.k.new_empty(*self.k.shape[:2], slots, self.k.shape[3])
        v = torch.empty_like(k)
        k[:, :, :self.length] = self.k[:, :, :self.length]
        v[:, :, :self.length] = self.v[:, :, :self.length]
        self.k, self.v = k, v

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class SlidingWindowCache:
    """A ring of `window` slots: position p lives in slot p % window."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, window: int, dtype: torch.dtype,
                 device: torch.device):
        self.window = window
        self.k = torch.zeros(batch, kv_heads, window, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((window,), -1, dtype=torch.long, device=device)  # -1: empty slot

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor):
        """Returns the ring's entries followed by the new ones (the new chunk may be longer than
        the window, and its early queries still need the ring's older keys), then keeps the last
        `window` positions in the ring."""
        keys = torch.cat((self.k, k_new), dim=2)
        values = torch.cat((self.v, v_new), dim=2)
        k_pos = torch.cat((self.pos, positions))
        keep = min(self.window, positions.shape[0])
        slots = positions[-keep:] % self.window
        self.k[:, :, slots] = k_new[:, :, -keep:]
        self.v[:, :, slots] = v_new[:, :, -keep:]
        self.pos[slots] = positions[-keep:]
        return keys, values, k_pos

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class KVCache:
    """The caches of all layers plus the next absolute position, bounded by `max_context` tokens."""

    def __init__(self, config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device,
                 max_context: int):
        self.max_context = max_context
        self.position = 0
        K, Dh = config.num_key_value_heads, config.head_dim
        self.layers: list[FullAttentionCache | SlidingWindowCache] = [
            SlidingWindowCache(batch, K, Dh, window, dtype, device) if (window := config.window_of(i))
            else FullAttentionCache(batch, K, Dh, dtype, device)
            for i in range(config.num_hidden_layers)
        ]

    def reserve(self, tokens: int) -> torch.Tensor:
        """Checks room for `tokens` more and returns their absolute positions [tokens]."""
        if self.position + tokens > self.max_context:
            raise ContextLimitError(
                f"context limit exceeded: {self.position} cached + {tokens} new tokens > "
                f"max_context {self.max_context}")
        device = self.layers[0].k.device
        return torch.arange(self.position, self.position + tokens, device=device)

    def advance(self, tokens: int) -> None:
        self.position += tokens

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
