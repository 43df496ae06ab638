"""Several sequences in one forward pass (Transformer.forward_sequences): each sequence's logits
equal those of the same sequence run alone, with staggered arrivals, different lengths, and windows
shorter than the sequences; a prompt's prefill may share a pass with other sequences' decode steps."""

from __future__ import annotations

import pytest
import torch

from engine import Engine

STEPS = 12


@pytest.fixture(scope="module", params=["tiny-odd", "small"])
def engine(request, model_dirs) -> Engine:
    return Engine.load(model_dirs[request.param], dtype="float32")


def _prompts(engine: Engine) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    # longer than the windows (7 and 16), all of different lengths
    return [torch.randint(0, 199_998, (n,), generator=g).tolist() for n in (23, 9, 31)]


def _alone(engine: Engine, prompt: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each greedy token, the sequence run by itself."""
    cache = engine.new_cache()
    logits = [engine.model.unembed(engine.forward(torch.tensor([prompt]), cache)[0, -1])]
    for _ in range(STEPS):
        token = int(torch.argmax(logits[-1]))
        logits.append(engine.model.unembed(engine.forward(torch.tensor([[token]]), cache)[0, -1]))
    return logits


@torch.inference_mode()
def test_sequences_stepped_together_equal_each_stepped_alone(engine):
    prompts = _prompts(engine)
    joins = [0, 0, 4]  # the third arrives while the others decode: its prefill shares their step
    alone = [_alone(engine, p) for p in prompts]
    together: list[list[torch.Tensor]] = [[] for _ in prompts]
    caches = [engine.new_cache() for _ in prompts]
    for step in range(max(joins) + STEPS + 1):
        active = [i for i, join in enumerate(joins) if join <= step and len(together[i]) <= STEPS]
        ids = [torch.tensor(prompts[i] if not together[i] else [int(torch.argmax(together[i][-1]))])
               for i in active]
        hidden = engine.model.forward_sequences(ids, [caches[i] for i in active])
        ends = torch.tensor([len(t) for t in ids]).cumsum(0) - 1  # each sequence's last row
        for i, row in zip(active, engine.model.unembed(hidden[ends])):
            together[i].append(row)
    # Rows of other sequences change only the order of float32 sums inside the kernels (measured
    # here: at most 1e-6 of the largest logit, a few float32 ulps).
    for i, prompt in enumerate(prompts):
        assert len(together[i]) == STEPS + 1
        got, want = torch.stack(together[i]), torch.stack(alone[i])
        assert torch.equal(got.argmax(-1), want.argmax(-1)), i  # the same greedy tokens
        scale = want.abs().max()
        assert (got - want).abs().max() <= 1e-5 * scale, (i, float((got - want).abs().max()), float(scale))


@torch.inference_mode()
def test_forward_sequences_checks_every_context_limit(engine):
    caches = [engine.new_cache(max_context=64), engine.new_cache(max_context=8)]
    with pytest.raises(ValueError, match="0 cached \\+ 9 new tokens > max_context 8"):
        engine.model.forward_sequences([torch.arange(5), torch.arange(9)], caches)
    assert [c.position for c in caches] == [0, 0]  # nothing was run
