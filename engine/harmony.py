"""The harmony chat format, through OpenAI's `openai-harmony` library.

Messages plus reasoning effort become prompt token ids; completion token ids become channels
(`analysis` = reasoning, `final` = the answer, `commentary` = tool calls). The library's encoding
comes from the tokenizer (`engine.tokenizer`), which builds it from the model's own ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import openai_harmony as oh

from engine.messages import FUNCTIONS, ChatMessage, FunctionTool, ToolCall, coerce_messages, coerce_tools
from engine.structured_output import ResponseFormat
from engine.tokenizer import StreamDecoder, Tokenizer

logger = logging.getLogger(__name__)

ReasoningEffort = Literal["low", "medium", "high"]
REASONING_EFFORTS: tuple[str, ...] = ("low", "medium", "high")

RETURN, CALL, END = 200002, 200012, 200007
STOP_TOKENS = frozenset({RETURN, CALL})  # the assistant's turn is over; <|end|> only ends one message
_EFFORTS = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}
# Real headers ("<|channel|>commentary to=functions.name <|constrain|>json") take ~10 tokens; a longer
# one means the model is writing text without a header, which is then taken as the answer.
_MAX_HEADER_TOKENS = 48
_CONSTRAIN = "<|constrain|>"
_HEADER_TOKENS = frozenset({200003, 200005, 200006, 200008})  # <|constrain|> <|channel|> <|start|> <|message|>


@dataclass
class ParsedCompletion:
    final: str = ""
    analysis: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


class HarmonyFormat:
    """Renders conversations and parses completions; one per tokenizer vocabulary."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.encoding = tokenizer.encoding

    def render(self, messages: Iterable[ChatMessage | Mapping[str, Any]], reasoning_effort: str = "medium",
               instructions: str | None = None, tools: Iterable[FunctionTool | Mapping[str, Any]] = (),
               current_date: str | None = None, response_format: ResponseFormat | None = None) -> list[int]:
        """The prompt for the assistant's next turn, ending with `<|start|>assistant`.

        System and developer messages become the developer message's instructions (after
        `instructions`), followed by the function tools and then the response format's
        `# Response Formats` section. Reasoning of finished assistant turns is dropped, reasoning of
        the turn in progress (after the last user message, e.g. around tool calls) is kept, as the
        format documentation specifies.

        Raises:
            ValueError: unknown role or reasoning effort, no user/assistant/tool message, a malformed
                message or tool (engine.messages; the message names its index and field), a tool call
                or result naming a function that `tools` (when given) does not declare.
        """
        if reasoning_effort not in _EFFORTS:
            raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
        chat = coerce_messages(messages)
        system = oh.SystemContent.new().with_reasoning_effort(_EFFORTS[reasoning_effort])
        if current_date:
            system = system.with_conversation_start_date(current_date)
        rendered = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
        notes = [instructions] if instructions else []
        notes += [m.content for m in chat if m.role in ("system", "developer") and m.content]
        tools = coerce_tools(tools)
        if tools:
            _check_tool_names(chat, {t.name for t in tools})
        if notes or tools:
            developer = oh.DeveloperContent.new()
            if notes:
                developer = developer.with_instructions("\n\n".join(notes))
            if tools:
                developer = developer.with_function_tools(
                    [oh.ToolDescription.new(t.name, t.description, parameters=t.parameters) for t in tools])
            rendered.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
        # Reasoning survives only in the turn in progress: after the last user message and before any
        # final answer (an assistant message with content and no tool call) that ends the turn.
        turn_start = max((i for i, m in enumerate(chat) if m.role == "user"), default=-1)
        last_final = max((i for i, m in enumerate(chat) if m.role == "assistant" and m.content and not m.tool_calls),
                         default=-1)
        last_tool = None
        conversation = [m for m in chat if m.role not in ("system", "developer")]
        if not conversation:
            raise ValueError("the conversation needs at least one user, assistant or tool message")
        for i, m in enumerate(chat):
            if m.role == "user":
                rendered.append(oh.Message.from_role_and_content(oh.Role.USER, m.content))
            elif m.role == "assistant":
                if m.reasoning and i > turn_start and i > last_final:
                    rendered.append(_assistant(m.reasoning, "analysis"))
                if m.tool_calls:
                    if m.content:  # a preamble the model showed before calling
                        rendered.append(_assistant(m.content, "commentary"))
                    for call in m.tool_calls:
                        rendered.append(_assistant(call.arguments, "commentary").with_recipient(call.recipient)
                                        .with_content_type("<|constrain|>json"))
                        last_tool = call.recipient
                elif m.content:
                    rendered.append(_assistant(m.content, "final"))
            elif m.role == "tool":
                tool = FUNCTIONS + m.name if m.name else last_tool
                if tool is None:
                    raise ValueError(f"messages[{i}] is a tool result that names no tool ('name' or 'tool_call_id') "
                                     f"and follows no tool call")
                rendered.append(oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, tool), m.content)
                                .with_recipient("assistant").with_channel("commentary"))
        tokens = self.encoding.render_conversation_for_completion(
            oh.Conversation.from_messages(rendered), oh.Role.ASSISTANT,
            oh.RenderConversationConfig(auto_drop_analysis=False))
        return self._with_section(tokens, response_format.prompt_section()) if response_format else tokens

    def _with_section(self, tokens: list[int], section: str) -> list[int]:
        """`tokens` with `section` appended to the developer message's text (after a blank line), or in
        a developer message of its own after the system message. openai-harmony has no response
        formats, so the text is re-encoded as a whole, as its renderer encodes a message's text."""
        header = self.encoding.render(oh.Message.from_role_and_content(oh.Role.DEVELOPER, ""))[:-1]  # ...<|message|>
        for i in range(len(tokens) - len(header) + 1):
            if tokens[i:i + len(header)] == header:
                start = i + len(header)
                end = tokens.index(END, start)
                text = self.tokenizer.decode(tokens[start:end]) + "\n\n" + section
                return tokens[:start] + self.tokenizer.encode(text) + tokens[end:]
        system_end = tokens.index(END) + 1
        developer = self.encoding.render(oh.Message.from_role_and_content(oh.Role.DEVELOPER, section))
        return tokens[:system_end] + developer + tokens[system_end:]

    def parser(self) -> CompletionParser:
        return CompletionParser(self)


class CompletionParser:
    """Follows completion tokens (after `<|start|>assistant`) message by message. Never raises on a
    malformed completion: text the format cannot place (no header, an endless or broken header)
    becomes final text, streamed as it comes; stray tokens after complete messages are ignored."""

    def __init__(self, fmt: HarmonyFormat):
        self._tokenizer = fmt.tokenizer
        self._parser = oh.StreamableParser(fmt.encoding, oh.Role.ASSISTANT, strict=False)
        self._tokens: list[int] = []
        self._header: list[int] = []                # tokens of the header being read
        self._plain: StreamDecoder | None = None    # set once the completion is taken as plain text
        self._trailing = False                      # set once tokens no longer fit after complete messages
        self.delta_channel: str | None = None       # channel of the text the last push() returned

    @property
    def channel(self) -> str | None:
        """Channel of the message being written, None while in a header or between messages."""
        if self._plain is not None:
            return "final"
        if self._trailing or self._parser.state != oh.StreamState.CONTENT:
            return None
        return self._parser.current_channel

    def push(self, token: int) -> str:
        """Feeds one token; returns the content text it adds (complete UTF-8 characters only) and sets
        `delta_channel` to the channel of the message it belongs to (None for header tokens)."""
        self._tokens.append(token)
        self.delta_channel = None
        if self._plain is not None:
            self.delta_channel = "final"
            return self._plain_text([token])
        if self._trailing:
            return ""
        completed = len(self._parser.messages)
        channel = self.channel
        try:
            self._parser.process(token)
        except oh.HarmonyError as e:
            if completed:
                logger.info("ignoring tokens after the last complete message: %s", e)
                self._trailing = True
                return ""
            logger.warning("unparseable completion, keeping its text as the answer: %s", e)
            return self._become_plain()
        state = self._parser.state
        self._header = self._header + [token] if state == oh.StreamState.HEADER else []
        if len(self._header) > _MAX_HEADER_TOKENS and not self._parser.messages:
            return self._become_plain()
        if len(self._parser.messages) > completed:  # this token closed a message
            message = self._parser.messages[-1]
            if message.channel is None and not _recipient(message.recipient):  # header-less text: the answer
                self.delta_channel = "final"
                return "".join(c.text for c in message.content)
            self.delta_channel = channel
            return ""
        if state == oh.StreamState.CONTENT:
            self.delta_channel = self._parser.current_channel
            return self._parser.last_content_delta or ""
        return ""

    def result(self) -> ParsedCompletion:
        """Messages so far, including an unfinished last one."""
        if self._plain is not None:
            return ParsedCompletion(final=self._tokenizer.decode(self._ordinary(self._tokens)))
        messages = [(m.channel, _recipient(m.recipient), "".join(c.text for c in m.content))
                    for m in self._parser.messages]
        if not self._trailing and self._parser.state == oh.StreamState.CONTENT:
            messages.append((self._parser.current_channel, _recipient(self._parser.current_recipient),
                             self._parser.current_content))
        elif not messages and self._header and not _HEADER_TOKENS & set(self._header):
            # cut before a header was recognisable: the text so far is header-less, i.e. the answer
            return ParsedCompletion(final=self._tokenizer.decode(self._ordinary(self._header)))
        parsed = ParsedCompletion()
        for channel, recipient, text in messages:
            if recipient and recipient != "assistant":
                parsed.tool_calls.append(ToolCall(recipient, text))
            elif channel == "analysis":
                parsed.analysis += text
            elif channel in ("final", None):  # header-less text is the answer (e.g. bare refusals)
                parsed.final += text
        return parsed

    def _become_plain(self) -> str:
        self._plain = self._tokenizer.stream_decoder()
        self.delta_channel = "final"
        return self._plain_text(self._tokens)

    def _plain_text(self, tokens: list[int]) -> str:
        return "".join(self._plain.push(t) for t in self._ordinary(tokens))

    def _ordinary(self, tokens: list[int]) -> list[int]:
        return [t for t in tokens if not self._tokenizer.is_special(t)]


def _recipient(recipient: str | None) -> str | None:
    """The message's real recipient. openai-harmony's parser reads the content type of a header
    without one (`<|channel|>final <|constrain|>json`) as the recipient."""
    return None if recipient is None or recipient.startswith(_CONSTRAIN) else recipient


def _check_tool_names(chat: list[ChatMessage], declared: set[str]) -> None:
    for i, m in enumerate(chat):
        for j, call in enumerate(m.tool_calls):
            if call.name not in declared:
                raise ValueError(f"messages[{i}].tool_calls[{j}] calls {call.name!r}, which is not among the declared "
                                 f"tools {sorted(declared)}")
        if m.role == "tool" and m.name is not None and m.name not in declared:
            raise ValueError(f"messages[{i}] is the result of tool {m.name!r}, which is not among the declared "
                             f"tools {sorted(declared)}")


def _assistant(text: str, channel: str) -> oh.Message:
    return oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel(channel)
