"""The decode loop: prefill a prompt, then sample one token per forward step."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from engine.sampling import Sampler


def sample_tokens(step: Callable[[torch.Tensor], torch.Tensor], prompt: list[int], sampler: Sampler,
                  max_new_tokens: int) -> Iterator[int]:
    """Yields up to max_new_tokens sampled ids; the caller stops early by closing the iterator.

    Args:
        step: runs ids [1, T] after the cached context and returns the last position's logits [V].
        prompt: the prompt ids (prefilled in one step call; the step chunks it).
    """
    logits = step(torch.tensor([prompt], dtype=torch.long))
    for produced in range(1, max_new_tokens + 1):
        token = sampler(logits)
        yield token
        if produced < max_new_tokens:  # no forward pass for a token nobody will sample after
            logits = step(torch.tensor([[token]], dtype=torch.long))
