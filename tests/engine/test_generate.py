"""Generation: harmony stops, stop strings, sampling determinism, cancellation, limits."""

from __future__ import annotations

import pytest
import torch

from engine import ContextLimitError, Engine, GenerationParams
from engine.chat import Completion
from engine.sampling import Sampler

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
# harmony docs' completion: analysis, <|end|>, a new assistant message, final, <|return|>
DOCUMENTED_COMPLETION = [200005, 35644, 200008, 1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842,
                         12295, 81645, 13, 51441, 6052, 13, 200007, 200006, 173781, 200005, 17196, 200008, 17,
                         659, 220, 17, 314, 220, 19, 13, 200002]


@pytest.fixture(scope="module")
def engine(tiny_dir) -> Engine:
    return Engine.load(tiny_dir, dtype="float32")


class _Scripted:
    """A reply fed from a token script instead of the model, through the real harmony parser and
    Completion: tokens are drawn until the completion says it has ended (as the scheduler does)."""

    def __init__(self, engine: Engine, tokens: list[int], params: GenerationParams | None = None):
        self._tokens, self._completion = tokens, Completion(engine.harmony.parser(), params or GenerationParams(), 10)
        self.consumed: list[int] = []
        self.result = None

    def __iter__(self):
        for token in self._tokens:
            self.consumed.append(token)
            yield self._completion.push(token)
            if self._completion.ended:
                break
        self.result = self._completion.result("stop" if self._completion.ended else "length")

    def run(self):
        for _ in self:
            pass
        return self.result


def test_documented_completion_splits_channels_and_stops_on_return(engine):
    generation = _Scripted(engine, DOCUMENTED_COMPLETION + [1, 2, 3])
    steps = list(generation)
    result = generation.result
    assert result.reasoning == 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'
    assert result.text == "2 + 2 = 4."
    assert result.finish_reason == "stop" and result.usage.completion_tokens == len(DOCUMENTED_COMPLETION)
    assert generation.consumed == DOCUMENTED_COMPLETION  # nothing after <|return|> is drawn
    assert "".join(s.text for s in steps if s.channel == "analysis") == result.reasoning
    assert "".join(s.text for s in steps if s.channel == "final") == result.text
    assert [s.token for s in steps] == DOCUMENTED_COMPLETION


def test_end_of_final_message_stops_but_end_of_analysis_does_not(engine):
    end_of_final = DOCUMENTED_COMPLETION[:-1] + [200007, 200006]
    generation = _Scripted(engine, end_of_final)
    generation.run()
    assert generation.result.finish_reason == "stop" and generation.consumed[-1] == 200007
    assert generation.result.text == "2 + 2 = 4."


def test_tool_call_stops_on_call(engine):
    completion = engine.harmony.encoding.encode(
        '<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
        'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>', allowed_special="all")
    generation = _Scripted(engine, completion + [1, 2])
    result = generation.run()
    assert result.finish_reason == "tool_calls" and generation.consumed == completion
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", '{"city":"Paris"}')]
    assert result.tool_calls[0].id.startswith("call_") and result.parsed is None
    assert result.reasoning == "Need weather." and result.text == ""


@pytest.mark.parametrize("stop", ["= 4", " 2 =", "4."])
def test_stop_string_truncates_final_text_and_is_never_emitted(engine, stop):
    generation = _Scripted(engine, DOCUMENTED_COMPLETION, GenerationParams(stop=(stop, "never")))
    steps = list(generation)
    expected = "2 + 2 = 4."[:"2 + 2 = 4.".index(stop)]
    assert generation.result.text == expected and generation.result.finish_reason == "stop"
    assert "".join(s.text for s in steps if s.channel == "final") == expected


def test_stop_string_in_reasoning_does_not_stop(engine):
    result = _Scripted(engine, DOCUMENTED_COMPLETION, GenerationParams(stop=("Simple",))).run()
    assert result.text == "2 + 2 = 4." and "Simple" in result.reasoning


def test_greedy_equals_argmax_of_logits(engine):
    params = GenerationParams(max_tokens=12, temperature=0)
    result = engine.generate(QUESTION, params).run()
    prompt = engine.render(QUESTION)
    assert result.finish_reason == "length" and result.usage == type(result.usage)(len(prompt), 12)
    ids = prompt + result.completion_ids
    expected = engine.logits(ids)[len(prompt) - 1:-1].argmax(dim=-1).tolist()
    assert result.completion_ids == expected


def test_same_seed_same_tokens_other_seed_other_tokens(engine):
    def sample(seed):
        return engine.generate(QUESTION, GenerationParams(max_tokens=10, seed=seed)).run().completion_ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_steps_stream_the_text_of_a_headerless_completion(engine):
    """The random model writes no harmony header: its text becomes the answer, streamed once the
    header is given up, and the streamed deltas add up to the result."""
    generation = engine.generate(QUESTION, GenerationParams(max_tokens=70, temperature=0))
    steps = list(generation)
    assert generation.result.text and "".join(s.text for s in steps) == generation.result.text
    assert all(isinstance(s.token, int) and isinstance(s.text, str) for s in steps)


def test_cancellation_is_checked_every_step(engine):
    polls = []

    def should_cancel():
        polls.append(1)
        return len(polls) > 3

    result = engine.generate(QUESTION, GenerationParams(max_tokens=50), should_cancel=should_cancel).run()
    assert result.finish_reason == "cancelled" and result.usage.completion_tokens == 3


def test_prompt_over_the_context_limit_is_refused_with_both_numbers(tiny_dir):
    engine = Engine.load(tiny_dir, dtype="float32", max_context=40)
    prompt_length = len(engine.render(QUESTION))
    with pytest.raises(ContextLimitError, match=rf"prompt has {prompt_length} tokens .* context limit is 40"):
        engine.generate(QUESTION)


def test_reply_stops_at_the_context_limit(tiny_dir):
    engine = Engine.load(tiny_dir, dtype="float32", max_context=80)
    prompt_length = len(engine.render(QUESTION))
    result = engine.generate(QUESTION, GenerationParams(max_tokens=500, temperature=0)).run()
    assert result.finish_reason == "length" and result.usage.total_tokens == 80 > prompt_length


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                 dict(reasoning_effort="extreme"), dict(stop=("",))])
def test_bad_params_name_the_argument(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GenerationParams(**bad)


def test_top_p_keeps_the_nucleus_only():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])  # probabilities ~ .64 .24 .09 .03
    sampler = Sampler(temperature=1.0, top_p=0.7, seed=0)
    assert {sampler(logits) for _ in range(200)} == {0, 1}
    assert {Sampler(1.0, top_p=0.5, seed=0)(logits) for _ in range(50)} == {0}
    assert Sampler(temperature=0)(torch.tensor([0.0, 3.0, 3.0])) == 1  # greedy: lowest id on ties
