"""Pydantic models of the tools' structured inputs and outputs (they become inputSchema/outputSchema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Effort = Literal["low", "medium", "high"]
Role = Literal["system", "developer", "user", "assistant", "tool"]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] | str | None = Field(default=None, description="A JSON object, or its text.")


class ToolCallIn(BaseModel):
    """A call the assistant made: `{name, arguments}` or OpenAI's `{id, type: "function", function}`."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description="The call's id, which a tool result may refer to.")
    type: Literal["function"] | None = None
    name: str | None = None
    arguments: dict[str, Any] | str | None = Field(default=None, description="A JSON object, or its text.")
    function: FunctionCall | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="Who speaks: system/developer (instructions), user, assistant, or tool "
                                   "(a tool's result).")
    content: str | None = Field(default=None, description="The message text (may be null on an assistant "
                                                          "message that only calls tools).")
    tool_calls: list[ToolCallIn] | None = Field(default=None, description="Assistant only: the tools it called.")
    tool_call_id: str | None = Field(default=None, description="Tool only: the id of the call this answers.")
    name: str | None = Field(default=None, description="Tool only: the tool that answered (instead of "
                                                       "tool_call_id; default the latest call's tool).")
    reasoning: str | None = Field(default=None, description="Assistant only: its reasoning, kept while its "
                                                            "turn is in progress (around tool calls).")
    reasoning_content: str | None = Field(default=None, description="Same as reasoning (another client's name).")


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-64 letters, digits, '_' or '-'.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments object.")
    strict: bool | None = None


class ToolSpec(BaseModel):
    """A function tool: `{name, description, parameters}` or OpenAI's `{type: "function", function: {...}}`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] | None = None
    function: FunctionSpec | None = None
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments object.")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(description="The format's name, 1-64 letters, digits, '_' or '-'.")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the answer must match.")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: the answer is JSON matching a schema, or any JSON object."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema", "json_object", "text"]
    json_schema: JsonSchemaFormat | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    """`{name}` or OpenAI's `{type: "function", function: {name}}`: call this tool."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] | None = None
    name: str | None = None
    function: NamedFunction | None = None


class ToolCallOut(BaseModel):
    id: str = Field(description="Give it back as tool_call_id with the tool's result.")
    name: str
    arguments: dict[str, Any] | str = Field(description="The arguments object (matching the tool's parameters); "
                                                        "text only if the model wrote no JSON object.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(default=0, description="Prompt tokens reused from the prefix cache (not recomputed).")


class GenerateResult(BaseModel):
    text: str = Field(description="The model's answer (harmony 'final' channel).")
    reasoning: str | None = Field(description="The model's chain of thought ('analysis' channel) when "
                                              "include_reasoning was true, else null.")
    finish_reason: Literal["stop", "length", "tool_calls"] = Field(
        description="'stop': the model finished or a stop string was hit; 'length': max_tokens or the "
                    "context limit was reached; 'tool_calls': the model called tools (see tool_calls).")
    reasoning_effort: Effort = Field(description="The reasoning effort this answer was generated with.")
    model: str
    usage: Usage
    parsed: Any = Field(default=None, description="Under a response_format: the answer as a JSON value "
                                                  "(null when the answer was cut short).")
    tool_calls: list[ToolCallOut] = Field(default_factory=list, description="The tools the model called, "
                                                                             "in order.")


class EmbedUsage(BaseModel):
    prompt_tokens: int


class EmbedResult(BaseModel):
    embeddings: list[list[float]] = Field(description="One vector per input text, in input order.")
    dimensions: int
    model: str
    usage: EmbedUsage


class ReasoningEffortResult(BaseModel):
    reasoning_effort: Effort = Field(description="The new default.")
    previous: Effort = Field(description="The default before this call.")
