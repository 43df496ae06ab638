"""Per-layer key/value caches for incremental decoding.

Full-attention layers keep every position and grow (doubling, up to the sequence's limit) with the
context; sliding-window layers keep a ring of exactly `window` entries, so their memory does not
grow. Both hand the attention op the keys together with their absolute positions, which is all the
mask needs.

A ring forgets, so a sequence can only be resumed at a position P (by the prefix cache) where its
rings were copied: `KVCache.marks` lists those positions, and each sliding layer keeps a
`RingSnapshot` of itself as it was after position P-1 (the "state at P") for every mark it passes.

Shapes: keys and values are stored [B, K, S, Dh] (batch, kv heads, slots, head dim).
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig


class ContextLimitError(ValueError):
    """More tokens than the cache may hold; the message gives both numbers."""


class KVMemoryError(ValueError):
    """A request needs more KV memory than the engine's budget; the message gives the numbers."""


class FullAttentionCache:
    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, max_slots: int, initial_slots: int = 64):
        self.max_slots = max_slots
        slots = min(initial_slots, max_slots)
        self.k = torch.empty(batch, kv_heads, slots, head_dim, dtype=dtype, device=device)
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

    def load_prefix(self, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        """Starts the cache as positions 0..P-1 of another sequence, given in consecutive pieces
        k/v [B, K, n, Dh] (copied)."""
        self.length = 0
        self._grow(sum(k.shape[2] for k in ks))
        for k, v in zip(ks, vs):
            end = self.length + k.shape[2]
            self.k[:, :, self.length:end] = k
            self.v[:, :, self.length:end] = v
            self.length = end

    def positions(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the keys and values [B, K, end-start, Dh] of positions start..end-1."""
        return self.k[:, :, start:end].clone(), self.v[:, :, start:end].clone()

    def _grow(self, needed: int) -> None:
        slots = max(self.k.shape[2], 1)
        while slots < needed:
            slots *= 2
        slots = max(min(slots, self.max_slots), needed)
        if slots <= self.k.shape[2]:
            return
        k = self.k.new_empty(*self.k.shape[:2], slots, self.k.shape[3])
        v = torch.empty_like(k)
        k[:, :, :self.length] = self.k[:, :, :self.length]
        v[:, :, :self.length] = self.v[:, :, :self.length]
        self.k, self.v = k, v

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class RingSnapshot:
    """One sliding layer's ring as it was at position P (holding positions P-window..P-1, slot
    p % window); immutable once made, so entries of the prefix cache share them."""

    def __init__(self, position: int, k: torch.Tensor, v: torch.Tensor):
        self.position, self.k, self.v = position, k, v

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class SlidingWindowCache:
    """A ring of `window` slots: position p lives in slot p % window."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, window: int, dtype: torch.dtype,
                 device: torch.device, marks: set[int] | None = None):
        self.window = window
        self.k = torch.zeros(batch, kv_heads, window, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((window,), -1, dtype=torch.long, device=device)  # -1: empty slot
        self.marks = marks if marks is not None else set()  # shared with the KVCache
        self.snapshots: dict[int, RingSnapshot] = {}

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor):
        """Returns the ring's entries followed by the new ones (the new chunk may be longer than
        the window, and its early queries still need the ring's older keys), then keeps the last
        `window` positions in the ring. Snapshots the ring at every mark this chunk reaches."""
        keys = torch.cat((self.k, k_new), dim=2)
        values = torch.cat((self.v, v_new), dim=2)
        k_pos = torch.cat((self.pos, positions))
        first, after = int(positions[0]), int(positions[-1]) + 1
        for mark in sorted(m for m in self.marks if first < m <= after and m not in self.snapshots):
            self.snapshots[mark] = self._ring_at(mark, keys, values, k_pos)
        keep = min(self.window, positions.shape[0])
        slots = positions[-keep:] % self.window
        self.k[:, :, slots] = k_new[:, :, -keep:]
        self.v[:, :, slots] = v_new[:, :, -keep:]
        self.pos[slots] = positions[-keep:]
        return keys, values, k_pos

    def _ring_at(self, position: int, keys: torch.Tensor, values: torch.Tensor, k_pos: torch.Tensor) -> RingSnapshot:
        held = (k_pos >= max(position - self.window, 0)) & (k_pos < position)
        slots = k_pos[held] % self.window
        k, v = torch.zeros_like(self.k), torch.zeros_like(self.v)
        k[:, :, slots] = keys[:, :, held]
        v[:, :, slots] = values[:, :, held]
        return RingSnapshot(position, k, v)

    def snapshot_now(self, position: int) -> RingSnapshot:
        """The ring as it is (the state at `position`, the next position to come), shared not copied:
        for a cache that is done."""
        return self.snapshots.get(position) or RingSnapshot(position, self.k, self.v)

    def load_snapshot(self, snapshot: RingSnapshot) -> None:
        """Starts the ring from a snapshot at P: slot s holds the position p in [P-window, P) with
        p ≡ s (mod window), or nothing where p < 0."""
        self.k.copy_(snapshot.k)
        self.v.copy_(snapshot.v)
        base = snapshot.position - self.window
        slots = torch.arange(self.window, device=self.pos.device)
        held = base + (slots - base) % self.window
        self.pos = torch.where(held >= 0, held, torch.full_like(held, -1))

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + sum(s.nbytes for s in self.snapshots.values())


class KVCache:
    """The caches of all layers plus the next absolute position, bounded by `max_context` tokens.
    `marks` are the positions where the sliding layers snapshot their rings (add them before the
    tokens that reach them run)."""

    def __init__(self, config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device,
                 max_context: int):
        self.max_context = max_context
        self.position = 0
        self.marks: set[int] = set()
        K, Dh = config.num_key_value_heads, config.head_dim
        self.layers: list[FullAttentionCache | SlidingWindowCache] = [
            SlidingWindowCache(batch, K, Dh, window, dtype, device, self.marks) if (window := config.window_of(i))
            else FullAttentionCache(batch, K, Dh, dtype, device, max_context)
            for i in range(config.num_hidden_layers)
        ]

    @staticmethod
    def bytes_for(config: ModelConfig, dtype: torch.dtype, tokens: int, snapshots: int = 0) -> int:
        """The most bytes a batch-1 cache of `tokens` positions with `snapshots` ring snapshots holds."""
        per_slot = 2 * config.num_key_value_heads * config.head_dim * dtype.itemsize  # one key and value
        windows = [config.window_of(i) for i in range(config.num_hidden_layers)]
        full_layers = sum(1 for w in windows if not w)
        ring_slots = sum(w for w in windows if w)
        return per_slot * (full_layers * tokens + ring_slots * (1 + snapshots))

    @property
    def sliding(self) -> list[SlidingWindowCache]:
        return [layer for layer in self.layers if isinstance(layer, SlidingWindowCache)]

    @property
    def full(self) -> list[FullAttentionCache]:
        return [layer for layer in self.layers if isinstance(layer, FullAttentionCache)]

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
