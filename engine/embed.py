"""Text embeddings: the mean of the final-normed hidden states over a text's own tokens.

The text is tokenized as is (no chat template). Texts are batched by length and right-padded: with
causal attention no real token ever sees a padding token, so a text's embedding does not depend on
what it is batched with (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PAD_ID = 199999  # <|endoftext|>, only ever placed after a text's own tokens


def embed_token_lists(forward: Callable[[torch.Tensor], torch.Tensor], token_lists: list[list[int]],
                      normalize: bool, max_batch_tokens: int) -> torch.Tensor:
    """Pooled embeddings [N, D] float32.

    Args:
        forward: ids [B, T] -> final-normed hidden states [B, T, D] from an empty cache.
        token_lists: each text's token ids (non-empty).
        normalize: scale every embedding to unit L2 norm.
        max_batch_tokens: bound on B·T per forward pass (padding included).
    """
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    pooled: dict[int, torch.Tensor] = {}
    start = 0
    while start < len(order):
        end = start
        while end < len(order):  # ascending lengths: the newest member is the longest
            longest = len(token_lists[order[end]])
            if end > start and longest * (end - start + 1) > max_batch_tokens:
                break
            end += 1
        longest = len(token_lists[order[end - 1]])
        batch = order[start:end]
        ids = torch.full((len(batch), longest), PAD_ID, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :len(token_lists[i])] = torch.tensor(token_lists[i])
        hidden = forward(ids)  # [B, T, D]
        for row, i in enumerate(batch):
            pooled[i] = hidden[row, :len(token_lists[i])].mean(dim=0)
        start = end
    embeddings = torch.stack([pooled[i] for i in range(len(token_lists))]).float().cpu()
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings
