"""engine.structured_output: the shapes of response_format / tools / tool_choice, and the errors that
reject a request before any decoding, each naming the argument and the path inside a schema."""

from __future__ import annotations

import pytest

from engine import GenerationParams
from engine.structured_output import (ResponseFormat, SchemaError, ToolChoice, check_json_schema, header_grammar,
                                      json_grammar)

WEATHER = {"name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PING = {"name": "ping"}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_openai_response_formats_are_read():
    params = GenerationParams(response_format={"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON, "strict": True, "description": "One person."}})
    assert params.response_format == ResponseFormat("person", PERSON, "One person.", True)
    assert GenerationParams(response_format={"type": "json_object"}).response_format.schema == {"type": "object"}
    assert GenerationParams(response_format={"type": "text"}).response_format is None
    assert GenerationParams(response_format=ResponseFormat("p", PERSON)).constrained
    assert not GenerationParams().constrained


def test_the_schema_is_copied_not_shared():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    params = GenerationParams(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    schema["properties"]["a"]["type"] = "integer"
    assert params.response_format.schema["properties"]["a"]["type"] == "string"


@pytest.mark.parametrize("choice, tools, want", [
    ("auto", [WEATHER], ToolChoice("auto")),
    ("none", [WEATHER], ToolChoice("none")),
    ("required", [WEATHER, PING], ToolChoice("required")),
    ({"name": "ping"}, [WEATHER, PING], ToolChoice("required", "ping")),
    ({"type": "function", "function": {"name": "get_weather"}}, [WEATHER], ToolChoice("required", "get_weather")),
    ("auto", [], ToolChoice("auto")),
])
def test_tool_choices(choice, tools, want):
    params = GenerationParams(tools=tools, tool_choice=choice)
    assert params.tool_choice == want
    assert params.constrained == bool(tools)


def test_the_response_formats_prompt_section_follows_harmony_layout():
    fmt = ResponseFormat("shopping_list", {"type": "object", "properties": {"items": {"type": "array"}}},
                         "entries on the list")
    assert fmt.prompt_section() == ('# Response Formats\n\n## shopping_list\n\n// entries on the list\n'
                                    '{"type":"object","properties":{"items":{"type":"array"}}}')
    assert ResponseFormat("x", {"type": "object"}).prompt_section() == \
        '# Response Formats\n\n## x\n\n{"type":"object"}'


@pytest.mark.parametrize("kwargs, match", [
    (dict(response_format={"type": "xml"}), r"response_format\.type must be"),
    (dict(response_format="json"), r"response_format must be an object"),
    (dict(response_format={"type": "json_schema"}), r"response_format\.json_schema must be an object"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}}),
     r"response_format\.json_schema\.name must be"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
     r"response_format\.json_schema\.schema must be a JSON Schema object"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"age": {"type": "integr"}}}}}),
     r"response_format\.json_schema\.schema\.properties\.age\.type: not valid JSON Schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "items": [{"minLength": "x"}]}}}}}),
     r"response_format\.json_schema\.schema\.properties\.tags\.items: not valid JSON Schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "[a-z"}}}}}),
     r"schema\.properties\.code\.pattern: not valid JSON Schema: '\[a-z' is not a 'regex'"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {  # look-ahead: Python's re
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^(?=a)[a-z]+$"}}}}}),
     r"schema\.properties\.code: the grammar library cannot enforce this schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "object", "properties": {"y": {
            "if": {"type": "string"}, "then": {"minLength": 2}}}}}}}}),
     r"schema\.properties\.x\.properties\.y: the grammar library cannot enforce this schema: .*if"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"p": {"$ref": "#/$defs/missing"}}}}}),
     r"schema\.properties\.p: the grammar library cannot enforce this schema"),
    (dict(tools=[WEATHER, {"name": "bad", "parameters": {"type": "object", "properties": {"n": {"minimum": "1"}}}}]),
     r"tools\[1\]\.parameters\.properties\.n\.minimum: not valid JSON Schema"),
    (dict(tools=[{"name": "get weather"}]), r"tools\[0\]\.name must be 1-64 letters"),
    (dict(tools=[WEATHER, WEATHER]), r"tools\[1\]\.name 'get_weather' is declared twice"),
    (dict(tools=[WEATHER], tool_choice="always"), r"tool_choice must be one of"),
    (dict(tools=[WEATHER], tool_choice={"name": "get_time"}),
     r"tool_choice names 'get_time', which is not among the declared tools \['get_weather'\]"),
    (dict(tool_choice="required"), r"tool_choice 'required' asks for a tool call but no tools are declared"),
    (dict(tools=[WEATHER], tool_choice={"type": "function"}), r"tool_choice must be one of"),
    (dict(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}),
     r"tool_choice 'required' requires a tool call, so the reply never has the final answer that response_format"),
    (dict(tools=[WEATHER], tool_choice={"name": "get_weather"}, response_format={"type": "json_object"}),
     r"tool_choice 'get_weather' requires a tool call"),
    (dict(response_format={"type": "json_object"}, stop=["}"]), r"stop strings cannot be combined with response_format"),
    (dict(max_reasoning_tokens=-1), r"max_reasoning_tokens must be a non-negative integer"),
])
def test_bad_requests_are_rejected_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationParams(**kwargs)


def test_schema_errors_are_value_errors_with_the_root_path():
    with pytest.raises(SchemaError, match=r"^where: the grammar library cannot enforce this schema: .*if"):
        check_json_schema({"if": {"type": "string"}}, "where")
    with pytest.raises(SchemaError, match=r"^where must be a JSON Schema object"):
        check_json_schema(True, "where")


def test_grammars_compile_and_list_the_allowed_headers():
    import llguidance

    headers = header_grammar(["analysis", "final"], final_json=False, tools=["get_weather"])
    assert '"analysis" <|message|>' in headers and '"final" <|message|>' in headers
    assert '"commentary to=functions.get_weather " <|constrain|> "json" <|message|>' in headers
    assert '"final " <|constrain|>' not in headers
    assert '"final " <|constrain|> "json" <|message|>' in header_grammar([], final_json=True, tools=[])
    with pytest.raises(ValueError, match="at least one choice"):
        header_grammar([], final_json=False, tools=[])
    for lark in (headers, json_grammar(PERSON, "<|return|>"), json_grammar({"type": "object"}, "<|call|>")):
        assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark)) == ""
    assert '"whitespace_flexible": false' in json_grammar(PERSON, "<|return|>")
    assert '"whitespace_flexible": true' in json_grammar({**PERSON, "x-guidance": {"whitespace_flexible": True}},
                                                         "<|return|>")
