"""Prefix cache: the KV state finished requests leave behind, reused by requests that start with
the same token ids (the next turn of a conversation, a retry, a shared system prompt).

An entry holds the keys/values of its full-attention layers for every position, as a list of
segments, and for the sliding-window layers the ring snapshots taken at its marks (message ends, the
end of the prompt) and at its end: a new request resumes at the furthest position P where both its
ids agree with the entry's and a ring snapshot exists, and prefills only the rest. When it ends, its
own entry shares the segments and snapshots it resumed from and adds one segment for positions P
onwards, so a conversation's turns hold each position's keys once. Bytes are counted once per
tensor storage; entries beyond the byte budget are evicted least recently used first (a storage
another entry still shares stays, and stays counted).

Thread-confined like the scheduler that uses it; the counters may be read from anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine.kv_cache import KVCache, RingSnapshot

RingSet = list[RingSnapshot]  # one snapshot per sliding layer, all at the same position


@dataclass(frozen=True)
class KVSegment:
    """Keys and values of every full-attention layer for positions [start, end); immutable."""

    start: int
    end: int
    full: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per full-attention layer: k, v [1, K, end-start, Dh]

    def head(self, end: int) -> KVSegment:
        """Positions [start, end) of this segment: views where they are at least half of it, else
        copies (a view keeps all of its segment's memory alive)."""
        n = end - self.start
        if 2 * n >= self.end - self.start:
            return KVSegment(self.start, end, tuple((k[:, :, :n], v[:, :, :n]) for k, v in self.full))
        return KVSegment(self.start, end, tuple((k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in self.full))


@dataclass(frozen=True)
class SharedPrefix:
    """What a sequence resumed from: the position, and the segments and ring snapshots up to it,
    which its own entry will share."""

    position: int = 0
    segments: tuple[KVSegment, ...] = ()
    rings: dict[int, RingSet] = field(default_factory=dict)


@dataclass
class PrefixEntry:
    tokens: tuple[int, ...]            # the positions the entry holds: 0..len-1
    segments: tuple[KVSegment, ...]    # covering [0, len) in order
    rings: dict[int, RingSet]          # position -> the sliding layers' rings there
    last_used: int = 0
    ids: torch.Tensor = field(init=False, repr=False)  # tokens as int64, for fast comparison

    def __post_init__(self) -> None:
        self.ids = torch.tensor(self.tokens, dtype=torch.long)

    def resume_point(self, prompt: torch.Tensor, sliding: bool) -> int:
        """The furthest position where a request with this prompt (int64 ids) can resume from the
        entry; it always leaves the prompt's last token to run (its logits give the first token)."""
        limit = min(_common_prefix(self.ids, prompt), len(prompt) - 1)
        if not sliding:
            return limit
        return max((p for p in self.rings if p <= limit), default=0)

    def shared_up_to(self, position: int) -> SharedPrefix:
        segments = tuple(s if s.end <= position else s.head(position) for s in self.segments if s.start < position)
        return SharedPrefix(position, segments, {p: r for p, r in self.rings.items() if p <= position})

    def tensors(self) -> Iterator[torch.Tensor]:
        for segment in self.segments:
            for k, v in segment.full:
                yield k
                yield v
        for rings in self.rings.values():
            for snapshot in rings:
                yield snapshot.k
                yield snapshot.v


@dataclass(frozen=True)
class PrefixHit:
    entry: PrefixEntry
    position: int


class PrefixCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: list[PrefixEntry] = []
        self._clock = itertools.count(1)
        self.bytes = 0
        self.hit_tokens_total = 0     # prompt tokens resumed from the cache
        self.prompt_tokens_total = 0  # prompt tokens of every request that looked

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def stats(self) -> dict[str, int | float]:
        looked = self.prompt_tokens_total
        return {"entries": self.entries, "bytes": self.bytes, "budget_bytes": self.budget_bytes,
                "hit_tokens_total": self.hit_tokens_total, "prompt_tokens_total": looked,
                "hit_rate": round(self.hit_tokens_total / looked, 4) if looked else 0.0}

    def resume(self, prompt: Sequence[int], cache: KVCache) -> SharedPrefix:
        """Fills an empty cache from the longest usable cached prefix of `prompt` and counts the
        lookup; returns what it resumed from (position 0 on a miss)."""
        self.prompt_tokens_total += len(prompt)
        hit = self.lookup(prompt, sliding=bool(cache.sliding))
        if hit is None:
            return SharedPrefix()
        self.hit_tokens_total += hit.position
        return self.restore(hit, cache)

    def lookup(self, prompt: Sequence[int], sliding: bool) -> PrefixHit | None:
        """The entry to resume `prompt` from, furthest first (then most recently used), or None."""
        best: PrefixHit | None = None
        prompt = torch.as_tensor(prompt, dtype=torch.long)
        for entry in self._entries:
            point = entry.resume_point(prompt, sliding)
            if point > 0 and (best is None or (point, entry.last_used) > (best.position, best.entry.last_used)):
                best = PrefixHit(entry, point)
        return best

    def restore(self, hit: PrefixHit, cache: KVCache) -> SharedPrefix:
        """Fills an empty cache with the hit's first `position` tokens (copied)."""
        shared = hit.entry.shared_up_to(hit.position)
        for i, layer in enumerate(cache.full):
            layer.load_prefix([s.full[i][0] for s in shared.segments], [s.full[i][1] for s in shared.segments])
        if cache.sliding:
            for layer, snapshot in zip(cache.sliding, shared.rings[hit.position]):
                layer.load_snapshot(snapshot)
        cache.position = hit.position
        hit.entry.last_used = next(self._clock)
        return shared

    def insert(self, tokens: Sequence[int], cache: KVCache, shared: SharedPrefix | None = None) -> None:
        """Keeps a finished sequence's state: `tokens` are the ids of its cache.position positions,
        `shared` what it resumed from. Entries it makes redundant leave; then the least recently used
        go until the budget holds."""
        if not self.enabled or cache.position == 0:
            return
        shared = shared or SharedPrefix()
        end, start = cache.position, shared.position
        segments = shared.segments
        if end > start:
            segments += (KVSegment(start, end, tuple(layer.positions(start, end) for layer in cache.full)),)
        rings: dict[int, RingSet] = {}
        if cache.sliding:
            rings = dict(shared.rings)
            for p in set().union(*(layer.snapshots for layer in cache.sliding)) | {end}:
                if p <= end:
                    rings[p] = [layer.snapshot_now(p) if p == end else layer.snapshots[p] for layer in cache.sliding]
        entry = PrefixEntry(tuple(tokens[:end]), segments, rings, next(self._clock))
        self._entries = [e for e in self._entries if not _covers(entry, e)]
        self._entries.append(entry)
        self._evict()

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _evict(self) -> None:
        self._entries.sort(key=lambda e: e.last_used)
        self.bytes = _bytes(self._entries)
        while self._entries and self.bytes > self.budget_bytes:
            self._entries.pop(0)
            self.bytes = _bytes(self._entries)


def _covers(new: PrefixEntry, old: PrefixEntry) -> bool:
    """Whether `new` can do everything `old` can: it starts with all of old's ids and has every
    resume point old has."""
    return (len(new.tokens) >= len(old.tokens) and new.tokens[:len(old.tokens)] == old.tokens
            and set(old.rings) <= set(new.rings))


def _bytes(entries: list[PrefixEntry]) -> int:
    """Memory the entries keep alive: each tensor storage once, however many entries share it."""
    storages = {}
    for entry in entries:
        for t in entry.tensors():
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n
