"""Prefix cache: the KV state finished requests leave behind, reused by requests that start with
the same token ids (the next turn of a conversation, a retry, a shared system prompt).

An entry holds the keys/values of its full-attention layers for every position, and for the
sliding-window layers the ring snapshots taken at its marks (message ends, the end of the prompt)
and at its end: a new request resumes at the furthest position P where both its ids agree with the
entry's and a ring snapshot exists, and prefills only the rest. Ring snapshots are immutable and
shared between entries (a conversation's next turn inherits its earlier ones), so bytes are
counted once per snapshot. Entries beyond the byte budget are evicted least recently used first.

Thread-confined like the scheduler that uses it; the counters may be read from anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.kv_cache import KVCache, RingSnapshot

RingSet = list[RingSnapshot]  # one snapshot per sliding layer, all at the same position


@dataclass
class PrefixEntry:
    tokens: tuple[int, ...]                   # the positions the entry holds: 0..len-1
    full: list[tuple[torch.Tensor, torch.Tensor]]  # per full-attention layer: k, v [1, K, len, Dh]
    rings: dict[int, RingSet]                 # position -> the sliding layers' rings there
    last_used: int = 0
    full_bytes: int = field(init=False)
    ids: torch.Tensor = field(init=False, repr=False)  # tokens as int64, for fast comparison

    def __post_init__(self) -> None:
        self.full_bytes = sum(k.nbytes + v.nbytes for k, v in self.full)
        self.ids = torch.tensor(self.tokens, dtype=torch.long)

    def resume_point(self, prompt: torch.Tensor, sliding: bool) -> int:
        """The furthest position where a request with this prompt (int64 ids) can resume from the
        entry; it always leaves the prompt's last token to run (its logits give the first token)."""
        limit = min(_common_prefix(self.ids, prompt), len(prompt) - 1)
        if not sliding:
            return limit
        return max((p for p in self.rings if p <= limit), default=0)


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

    def resume(self, prompt: Sequence[int], cache: KVCache) -> tuple[int, dict[int, RingSet]]:
        """Fills an empty cache from the longest usable cached prefix of `prompt` and counts the
        lookup: the position reached (0 on a miss) and the ring snapshots to share (see restore)."""
        self.prompt_tokens_total += len(prompt)
        hit = self.lookup(prompt, sliding=bool(cache.sliding))
        if hit is None:
            return 0, {}
        self.hit_tokens_total += hit.position
        return hit.position, self.restore(hit, cache)

    def lookup(self, prompt: Sequence[int], sliding: bool) -> PrefixHit | None:
        """The entry to resume `prompt` from, furthest first (then most recently used), or None."""
        best: PrefixHit | None = None
        prompt = torch.as_tensor(prompt, dtype=torch.long)
        for entry in self._entries:
            point = entry.resume_point(prompt, sliding)
            if point > 0 and (best is None or (point, entry.last_used) > (best.position, best.entry.last_used)):
                best = PrefixHit(entry, point)
        return best

    def restore(self, hit: PrefixHit, cache: KVCache) -> dict[int, RingSet]:
        """Fills an empty cache with the hit's first `position` tokens; returns the entry's ring
        snapshots up to there, which the sequence's own entry will share."""
        P, entry = hit.position, hit.entry
        for layer, (k, v) in zip(cache.full, entry.full):
            layer.load_prefix(k[:, :, :P], v[:, :, :P])
        if cache.sliding:
            for layer, snapshot in zip(cache.sliding, entry.rings[P]):
                layer.load_snapshot(snapshot)
        cache.position = P
        entry.last_used = next(self._clock)
        return {p: rings for p, rings in entry.rings.items() if p <= P}

    def insert(self, tokens: Sequence[int], cache: KVCache, inherited: dict[int, RingSet]) -> None:
        """Keeps a finished sequence's state: `tokens` are the ids of its cache.position positions.
        Entries it makes redundant leave; then the least recently used go until the budget holds."""
        if not self.enabled or cache.position == 0:
            return
        tokens = tuple(tokens[:cache.position])
        rings: dict[int, RingSet] = {}
        if cache.sliding:
            rings = dict(inherited)
            points = set().union(*(layer.snapshots for layer in cache.sliding)) | {cache.position}
            for p in points:
                if p <= cache.position:
                    rings[p] = [layer.snapshot_now(p) if p == cache.position else layer.snapshots[p]
                                for layer in cache.sliding]
        entry = PrefixEntry(tokens, [layer.prefix() for layer in cache.full], rings, next(self._clock))
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
    snapshots = {id(s): s.nbytes for e in entries for rings in e.rings.values() for s in rings}
    return sum(e.full_bytes for e in entries) + sum(snapshots.values())


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n

