"""Next-token choice from float32 logits: greedy, temperature, nucleus (top-p); seeded."""

from __future__ import annotations

import torch


class Sampler:
    """temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / temperature)
    restricted to the smallest set of most likely tokens whose mass reaches top_p."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None):
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """logits [V] float32 -> token id."""
        if self.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            # keep tokens whose preceding mass is below top_p: always at least the most likely one
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))
