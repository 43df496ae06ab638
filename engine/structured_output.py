"""What a request asks of the shape of its answer: a response format, function tools and a tool choice.

Everything here is checked when GenerationParams is made, before any decoding, and every error
names the argument (and, inside a JSON Schema, the path) it is about:
- `response_format`: OpenAI's `{"type": "json_schema", "json_schema": {"name", "schema", "strict",
  "description"}}` or `{"type": "json_object"}` (any JSON object), or a ResponseFormat.
- `tool_choice`: "auto" | "none" | "required" | `{"name": NAME}` (also OpenAI's
  `{"type": "function", "function": {"name": NAME}}`), or a ToolChoice.
A schema must be valid JSON Schema (checked against the 2020-12 meta-schema with `jsonschema`) and
one the grammar library can enforce (llguidance compiles it; what it cannot use is rejected with the
deepest sub-schema that fails on its own).

The grammars (llguidance's Lark dialect) are made here too, so that the rules about what a reply may
contain live in one place: JSON is written compactly (`{"a":1,"b":[2,3]}`, as gpt-oss writes tool
arguments) unless the schema's own `x-guidance` options say otherwise.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

TOOL_CHOICES = ("auto", "none", "required")
# JSON layout of constrained answers, as llguidance's JSON compiler options.
_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# Keywords whose values are sub-schemas, by whether they hold one schema, a list, or a name -> schema map.
_ONE = ("additionalProperties", "items", "not", "contains", "if", "then", "else", "propertyNames",
        "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_LIST = ("prefixItems", "anyOf", "oneOf", "allOf")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SchemaError(ValueError):
    """A JSON Schema that is invalid or that the grammar library cannot enforce; names its path."""


@dataclass(frozen=True)
class ResponseFormat:
    """The final answer is one JSON value matching `schema` (json_object: any JSON object)."""

    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if not _FORMAT_NAME.match(self.name):
            raise ValueError(f"response_format.json_schema.name must be 1-64 letters, digits, '_' or '-', "
                             f"got {self.name!r}")
        check_json_schema(self.schema, "response_format.json_schema.schema")

    def prompt_section(self) -> str:
        """The developer message's `# Response Formats` section for this format (harmony's layout)."""
        comment = f"// {self.description}\n" if self.description else ""
        return f"# Response Formats\n\n## {self.name}\n\n{comment}{json.dumps(self.schema, separators=(',', ':'))}"


@dataclass(frozen=True)
class ToolChoice:
    """"auto": answer or call a tool; "none": answer; "required": call some tool; `name`: call that one."""

    mode: str = "auto"
    name: str | None = None

    @property
    def must_call(self) -> bool:
        return self.mode == "required" or self.name is not None


def coerce_response_format(value: ResponseFormat | Mapping[str, Any] | None) -> ResponseFormat | None:
    if value is None or isinstance(value, ResponseFormat):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"response_format must be an object with 'type', got {type(value).__name__}")
    kind = value.get("type")
    if kind == "text":  # OpenAI's explicit "no format"
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"})
    if kind != "json_schema":
        raise ValueError(f"response_format.type must be 'json_schema', 'json_object' or 'text', got {kind!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise ValueError("response_format.json_schema must be an object with 'name' and 'schema'")
    schema, strict, description = spec.get("schema"), spec.get("strict", True), spec.get("description")
    if not isinstance(schema, Mapping):
        raise ValueError(f"response_format.json_schema.schema must be a JSON Schema object, "
                         f"got {type(schema).__name__}")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError(f"response_format.json_schema.strict must be a boolean, got {strict!r}")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"response_format.json_schema.description must be a string, got {description!r}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise ValueError(f"response_format.json_schema.name must be a string, got {name!r}")
    return ResponseFormat(name, copy.deepcopy(dict(schema)), description or None, bool(strict))


def coerce_tool_choice(value: ToolChoice | str | Mapping[str, Any] | None, tool_names: Iterable[str]) -> ToolChoice:
    """The tool choice, checked against the declared tools' names."""
    names = list(tool_names)
    if value is None:
        choice = ToolChoice()
    elif isinstance(value, ToolChoice):
        choice = value
    elif isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {TOOL_CHOICES} or {{'name': NAME}}, got {value!r}")
        choice = ToolChoice(value)
    elif isinstance(value, Mapping):
        function = value.get("function") if value.get("type") == "function" else value
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool_choice must be one of {TOOL_CHOICES}, {{'name': NAME}} or "
                             f"{{'type': 'function', 'function': {{'name': NAME}}}}, got {dict(value)!r}")
        choice = ToolChoice("required", name)
    else:
        raise ValueError(f"tool_choice must be a string or an object, got {type(value).__name__}")
    if choice.mode not in TOOL_CHOICES:
        raise ValueError(f"tool_choice must be one of {TOOL_CHOICES}, got {choice.mode!r}")
    if choice.must_call and not names:
        raise ValueError(f"tool_choice {choice.name or choice.mode!r} asks for a tool call but no tools are declared")
    if choice.name is not None and choice.name not in names:
        raise ValueError(f"tool_choice names {choice.name!r}, which is not among the declared tools {names}")
    return choice


def check_json_schema(schema: Any, where: str) -> None:
    """Raises SchemaError naming `where` plus the path inside the schema when `schema` is not valid
    JSON Schema or cannot be enforced by the grammar library."""
    import jsonschema
    import llguidance

    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where} must be a JSON Schema object, got {type(schema).__name__}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise SchemaError(f"{where}{_path(e.path)}: not valid JSON Schema: {e.message}") from None
    error = _grammar_error(schema, llguidance)
    if error:
        path = _deepest_failing(schema, schema, (), llguidance)
        raise SchemaError(f"{where}{_path(path)}: the grammar library cannot enforce this schema: "
                          f"{error.strip().splitlines()[0]}")


def json_grammar(schema: Mapping[str, Any], terminator: str) -> str:
    """Lark grammar: one JSON value matching `schema` (compact unless its x-guidance says otherwise),
    then the special token `terminator` (e.g. "<|return|>")."""
    return f"start: answer {terminator}\nanswer: %json {json.dumps(_with_layout(schema))}\n"


def header_grammar(channels: Iterable[str], final_json: bool, tools: Iterable[str]) -> str:
    """Lark grammar of one assistant message header, from `<|channel|>` to `<|message|>`: the plain
    channels given ("analysis", "commentary" for a preamble, "final"), a JSON final answer, and calls
    to the named function tools, each as gpt-oss writes them."""
    options = [f'"{channel}" <|message|>' for channel in channels]
    if final_json:
        options.append('"final " <|constrain|> "json" <|message|>')
    options += [f'"commentary to=functions.{name} " <|constrain|> "json" <|message|>' for name in tools]
    if not options:
        raise ValueError("a message header needs at least one choice")
    return "start: <|channel|> header\nheader: " + "\n      | ".join(options) + "\n"


def _with_layout(schema: Mapping[str, Any]) -> dict[str, Any]:
    own = schema.get("x-guidance")
    return {**schema, "x-guidance": {**_COMPACT_JSON, **(own if isinstance(own, Mapping) else {})}}


def _grammar_error(schema: Mapping[str, Any], llguidance) -> str:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(_with_layout(schema))
    except ValueError as e:
        return str(e)
    return llguidance.LLMatcher.validate_grammar(grammar)


def _deepest_failing(root: Mapping[str, Any], schema: Mapping[str, Any], path: tuple, llguidance) -> tuple:
    """The path of the deepest sub-schema that the grammar library rejects on its own (with the
    root's definitions beside it, so references still resolve)."""
    definitions = {k: root[k] for k in ("$defs", "definitions") if k in root}
    for child_path, child in _subschemas(schema, path):
        if _grammar_error({**definitions, **child}, llguidance):
            return _deepest_failing(root, child, child_path, llguidance)
    return path


def _subschemas(schema: Mapping[str, Any], path: tuple) -> Iterator[tuple[tuple, Mapping[str, Any]]]:
    for key in _ONE:
        if isinstance(schema.get(key), Mapping):
            yield path + (key,), schema[key]
    for key in _LIST:
        if isinstance(schema.get(key), list):
            yield from ((path + (key, i), s) for i, s in enumerate(schema[key]) if isinstance(s, Mapping))
    for key in _MAP:
        if isinstance(schema.get(key), Mapping):
            yield from ((path + (key, name), s) for name, s in schema[key].items() if isinstance(s, Mapping))


def _path(parts: Iterable[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
