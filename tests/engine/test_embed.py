"""Embeddings: mean-pooled final hidden states of a text's own tokens."""

from __future__ import annotations

import pytest
import torch

from engine import Engine

TEXTS = ["hello", "The quick brown fox jumps over the lazy dog.", "数学 и математика", "a",
         "def f(x):\n    return x * 2  # 🙂" * 3]


@pytest.fixture(scope="module")
def engine(tiny_dir) -> Engine:
    return Engine.load(tiny_dir, dtype="float32")


def test_shape_normalisation_and_determinism(engine):
    embeddings = engine.embed(TEXTS)
    assert embeddings.shape == (len(TEXTS), engine.config.hidden_size) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(TEXTS)))
    assert torch.equal(embeddings, engine.embed(TEXTS))
    raw = engine.embed(TEXTS, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), embeddings)


def test_pooling_is_the_mean_of_the_texts_own_final_hidden_states(engine):
    text = TEXTS[1]
    ids = torch.tensor([engine.tokenizer.encode(text)])
    hidden = engine.forward(ids, engine.new_cache())[0]  # [T, D] final-normed
    torch.testing.assert_close(engine.embed([text], normalize=False)[0], hidden.mean(dim=0))


def test_batch_equals_one_by_one(engine):
    batched = engine.embed(TEXTS, normalize=False)
    single = torch.cat([engine.embed([t], normalize=False) for t in TEXTS])
    # Only matmul rounding differs (row counts change blocking): float32 eps times a few hundred
    # accumulations, relative to the values' size.
    tolerance = 1e-5 * single.abs().max().item()
    assert (batched - single).abs().max().item() <= tolerance


def test_small_batches_give_the_same_embeddings(tiny_dir, engine):
    small_engine = Engine.load(tiny_dir, dtype="float32", embed_batch_tokens=8)  # one or two texts a pass
    expected = engine.embed(TEXTS, normalize=False)
    got = small_engine.embed(TEXTS, normalize=False)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_empty_and_over_long_texts_name_the_text(tiny_dir, engine):
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        engine.embed(["ok", ""])
    with pytest.raises(ValueError, match="non-empty list"):
        engine.embed([])
    short = Engine.load(tiny_dir, dtype="float32", max_context=16)
    with pytest.raises(ValueError, match=r"texts\[0\] has \d+ tokens but the limit is 16"):
        short.embed(["word " * 40])
