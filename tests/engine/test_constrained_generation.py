"""Structured output and function calling on a random-weight checkpoint: its free text is noise, so
every valid answer below is the grammar's doing. Each reply is checked with `jsonschema` and against
the harmony structure the request asked for."""

from __future__ import annotations

import json

import jsonschema
import pytest

from engine import Engine, GenerationParams
from engine.scheduler import Request, Scheduler

QUESTION = [{"role": "user", "content": "Describe a person as JSON."}]
# Bounded where a random model would otherwise write for ever (strings and numbers without limits).
SCHEMAS = {
    "nested-objects": {
        "type": "object",
        "properties": {"person": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 8},
            "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["zip"], "additionalProperties": False}},
            "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False},
    "bounded-arrays": {
        "type": "object",
        "properties": {"scores": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 99},
                                  "minItems": 2, "maxItems": 4},
                       "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
        "required": ["scores", "flags"], "additionalProperties": False},
    "enums-and-consts": {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3, None]},
                       "kind": {"const": "shirt"}},
        "required": ["colour", "size", "kind"], "additionalProperties": False},
    "numbers": {
        "type": "object",
        "properties": {"price": {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.01},
                       "count": {"type": "integer", "minimum": 1, "maximum": 12},
                       "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "multipleOf": 0.125}},
        "required": ["price", "count", "ratio"], "additionalProperties": False},
    "optional-fields": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
                       "nickname": {"type": "string", "maxLength": 6}, "vip": {"type": "boolean"}},
        "required": ["id"], "additionalProperties": False},
    "string-patterns": {
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
                       "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
                       "email": {"type": "string", "pattern": "^[a-z]{1,6}@[a-z]{1,6}\\.(com|org)$"}},
        "required": ["date", "code", "email"], "additionalProperties": False},
    "definitions-and-anyof": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                             "y": {"type": "integer", "minimum": 0, "maximum": 9}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"shape": {"anyOf": [{"$ref": "#/$defs/point"},
                                           {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}]}},
        "required": ["shape"], "additionalProperties": False},
}
WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object",
                          "properties": {"city": {"type": "string", "maxLength": 10},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"], "additionalProperties": False}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "pattern": "^UTC[+-][0-9]{1,2}$"}},
                   "required": ["zone"], "additionalProperties": False}}}
PING = {"name": "ping", "description": "Is the service up?"}
TOOL_SCHEMAS = {"get_weather": WEATHER["parameters"], "get_time": TIME["function"]["parameters"],
                "ping": {"type": "object", "properties": {}, "additionalProperties": False}}
SAMPLINGS = [(0.0, 0), (0.7, 1), (1.0, 2), (1.0, 3)]  # (temperature, seed)


@pytest.fixture(scope="module")
def engine(tiny_dir) -> Engine:
    return Engine.load(tiny_dir, dtype="float32")


def _completion(engine, result) -> str:
    return engine.tokenizer.decode(result.completion_ids)


def _json_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name.replace("-", "_"), "schema": SCHEMAS[name],
                                                    "strict": True}}


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("temperature, seed", SAMPLINGS)
def test_the_answer_is_json_matching_the_schema(engine, name, temperature, seed):
    params = GenerationParams(max_tokens=160, temperature=temperature, seed=seed, max_reasoning_tokens=12,
                              response_format=_json_format(name))
    result = engine.generate(QUESTION, params).run()
    completion = _completion(engine, result)
    assert result.finish_reason == "stop", completion
    jsonschema.validate(json.loads(result.text), SCHEMAS[name])
    assert result.parsed == json.loads(result.text)
    # harmony's structure: reasoning (if any), then the final message marked as JSON, ended by <|return|>
    answer = f"<|channel|>final <|constrain|>json<|message|>{result.text}<|return|>"
    assert completion == answer or completion.endswith(f"<|end|><|start|>assistant{answer}")
    assert result.tool_calls == [] and result.mask_seconds > 0


def test_reasoning_stays_free_and_ends_at_its_budget(engine):
    reasoned = 0
    for seed in range(6):
        params = GenerationParams(max_tokens=100, temperature=1.0, seed=seed, max_reasoning_tokens=30,
                                  response_format=_json_format("numbers"))
        result = engine.generate(QUESTION, params).run()
        jsonschema.validate(result.parsed, SCHEMAS["numbers"])
        if not _completion(engine, result).startswith("<|channel|>analysis<|message|>"):
            continue  # the model went straight to its answer
        reasoned += 1
        ids = result.completion_ids
        analysis_start, analysis_end = ids.index(200008) + 1, ids.index(200007)  # after <|message|>, its <|end|>
        assert analysis_end <= 30  # the model's own <|end|>, or one forced at the budget
        assert not any(199_998 <= t for t in ids[analysis_start:analysis_end])  # no control tokens inside
    assert reasoned


def test_a_required_answer_keeps_its_share_of_max_tokens_by_default(engine):
    for max_tokens, reasoning_limit in ((120, 120 - 32), (400, 300)):  # max(32, a quarter) kept for the answer
        params = GenerationParams(max_tokens=max_tokens, temperature=1.0, seed=3,
                                  response_format=_json_format("enums-and-consts"))
        result = engine.generate(QUESTION, params).run()
        assert result.finish_reason == "stop"
        assert result.completion_ids.index(200007) <= reasoning_limit
        jsonschema.validate(result.parsed, SCHEMAS["enums-and-consts"])


def test_json_object_answers_are_json_objects(engine):
    finished = 0
    for seed in range(6):
        params = GenerationParams(max_tokens=24, temperature=1.0, seed=seed, max_reasoning_tokens=2,
                                  response_format={"type": "json_object"})
        result = engine.generate(QUESTION, params).run()
        assert "<|channel|>final <|constrain|>json<|message|>{" in _completion(engine, result)
        if result.finish_reason == "stop":
            finished += 1
            assert isinstance(result.parsed, dict) and json.loads(result.text) == result.parsed
        else:  # a random model's free-form object may not close in 24 tokens: nothing is parsed then
            assert result.finish_reason == "length" and result.parsed is None


@pytest.mark.parametrize("temperature, seed", SAMPLINGS)
def test_tool_choice_required_calls_a_declared_tool_with_valid_arguments(engine, temperature, seed):
    params = GenerationParams(max_tokens=120, temperature=temperature, seed=seed, max_reasoning_tokens=10,
                              tools=[WEATHER, TIME, PING], tool_choice="required")
    result = engine.generate([{"role": "user", "content": "What is the weather?"}], params).run()
    assert result.finish_reason == "tool_calls", _completion(engine, result)
    (call,) = result.tool_calls  # one call per message; the reply ends at <|call|>
    jsonschema.validate(json.loads(call.arguments), TOOL_SCHEMAS[call.name])
    assert call.id.startswith("call_") and result.text == ""
    assert f"<|channel|>commentary to=functions.{call.name} <|constrain|>json<|message|>{call.arguments}<|call|>" \
        in _completion(engine, result)


@pytest.mark.parametrize("name", ["get_weather", "get_time", "ping"])
def test_tool_choice_by_name_calls_that_tool(engine, name):
    for temperature, seed in SAMPLINGS[:2]:
        params = GenerationParams(max_tokens=120, temperature=temperature, seed=seed, max_reasoning_tokens=10,
                                  tools=[WEATHER, TIME, PING], tool_choice={"name": name})
        result = engine.generate([{"role": "user", "content": "Go."}], params).run()
        assert result.finish_reason == "tool_calls" and [c.name for c in result.tool_calls] == [name]
        jsonschema.validate(json.loads(result.tool_calls[0].arguments), TOOL_SCHEMAS[name])


def test_tool_choice_none_never_calls(engine):
    for temperature, seed in SAMPLINGS:
        params = GenerationParams(max_tokens=40, temperature=temperature, seed=seed, max_reasoning_tokens=5,
                                  tools=[WEATHER, PING], tool_choice="none")
        result = engine.generate([{"role": "user", "content": "Weather?"}], params).run()
        completion = _completion(engine, result)
        assert result.tool_calls == [] and " to=" not in completion and "<|call|>" not in completion
        assert "<|channel|>final<|message|>" in completion  # the reasoning budget led to the answer


def test_tool_choice_auto_answers_or_calls_validly(engine):
    seen = set()
    for seed in range(8):
        params = GenerationParams(max_tokens=60, temperature=1.0, seed=seed, max_reasoning_tokens=3,
                                  tools=[WEATHER, PING], response_format=_json_format("enums-and-consts"))
        result = engine.generate([{"role": "user", "content": "Weather?"}], params).run()
        if result.tool_calls:
            seen.add("call")
            assert result.finish_reason == "tool_calls"
            jsonschema.validate(json.loads(result.tool_calls[0].arguments), TOOL_SCHEMAS[result.tool_calls[0].name])
        elif result.finish_reason == "stop":
            seen.add("answer")
            jsonschema.validate(result.parsed, SCHEMAS["enums-and-consts"])
    assert seen  # every finished reply was one of the two, and valid


def test_a_tool_result_goes_back_in_and_the_next_turn_answers(engine):
    params = GenerationParams(max_tokens=120, temperature=1.0, seed=1, max_reasoning_tokens=6, tools=[WEATHER],
                              tool_choice="required")
    first = engine.generate([{"role": "user", "content": "Weather in Oslo?"}], params).run()
    (call,) = first.tool_calls
    reasoning = first.reasoning or "Need the weather tool."  # the noise model may not reason; a host sends it back
    conversation = [{"role": "user", "content": "Weather in Oslo?"},
                    {"role": "assistant", "reasoning": reasoning,
                     "tool_calls": [{"id": call.id, "type": "function",
                                     "function": {"name": call.name, "arguments": call.arguments}}]},
                    {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}]
    second = engine.generate(conversation, GenerationParams(
        max_tokens=120, temperature=0.0, max_reasoning_tokens=6, tools=[WEATHER],
        response_format=_json_format("enums-and-consts"), tool_choice="none")).run()
    assert second.finish_reason == "stop"
    jsonschema.validate(second.parsed, SCHEMAS["enums-and-consts"])
    # the call and its result are in the prompt as harmony writes them, with the turn's reasoning kept
    prompt = engine.tokenizer.decode(engine.render(conversation, tools=[WEATHER]))
    assert f"<|start|>assistant<|channel|>analysis<|message|>{reasoning}<|end|>" in prompt
    assert (f"<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
            f"{call.arguments}<|call|>") in prompt
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"sky\": \"clear\"}<|end|>" \
        in prompt


def test_constrained_requests_decoded_together_equal_each_alone(engine):
    requests = [
        ([{"role": "user", "content": "A"}], dict(response_format=_json_format("bounded-arrays"))),
        ([{"role": "user", "content": "B b"}], dict(tools=[WEATHER, TIME], tool_choice="required")),
        ([{"role": "user", "content": "C c c"}], dict()),  # unconstrained beside them
        ([{"role": "user", "content": "D"}], dict(response_format=_json_format("string-patterns"))),
    ]

    def params(extra):
        return GenerationParams(max_tokens=50, temperature=0.0, max_reasoning_tokens=7, **extra) \
            if extra else GenerationParams(max_tokens=50, temperature=0.0)

    alone = [engine.generate(messages, params(extra)).run().completion_ids for messages, extra in requests]
    scheduler = Scheduler(engine, max_batch=4)
    batch = [Request(messages, params(extra)) for messages, extra in requests]
    for request in batch:
        scheduler.submit(request)
    while not all(r.done for r in batch):
        scheduler.step()
    assert [r.result.completion_ids for r in batch] == alone
    assert batch[2].result.mask_seconds == 0  # an unconstrained request is never masked


def test_history_naming_an_undeclared_tool_is_refused_before_decoding(engine):
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "tool_calls": [{"name": "get_time", "arguments": "{}"}]},
               {"role": "tool", "content": "noon"}]
    with pytest.raises(ValueError, match=r"messages\[1\]\.tool_calls\[0\] calls 'get_time'"):
        engine.generate(history, GenerationParams(tools=[WEATHER]))
