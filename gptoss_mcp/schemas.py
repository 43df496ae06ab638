"""Pydantic models of the tools' structured inputs and outputs (they become inputSchema/outputSchema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Effort = Literal["low", "medium", "high"]
Role = Literal["system", "developer", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="Who speaks: system/developer (instructions), user, assistant, or tool "
                                   "(a tool's result).")
    content: str = Field(description="The message text.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(default=0, description="Prompt tokens reused from the prefix cache (not recomputed).")


class GenerateResult(BaseModel):
    text: str = Field(description="The model's answer (harmony 'final' channel).")
    reasoning: str | None = Field(description="The model's chain of thought ('analysis' channel) when "
                                              "include_reasoning was true, else null.")
    finish_reason: Literal["stop", "length"] = Field(
        description="'stop': the model finished or a stop string was hit; 'length': max_tokens or the "
                    "context limit was reached.")
    reasoning_effort: Effort = Field(description="The reasoning effort this answer was generated with.")
    model: str
    usage: Usage


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
