"""Grammar-constrained decoding of one harmony reply (llguidance computes the token masks).

A reply is a sequence of assistant messages, each `<|channel|>HEADER<|message|>CONTENT<terminator>`
and, between messages, `<|start|>assistant`. A ReplyConstraint follows the reply token by token and
restricts the logits before each sample to what the request allows:
- a message header: llguidance's mask for the headers allowed now (header_grammar): reasoning, a
  preamble, the final answer (as JSON under a response format), calls to the declared tools;
- a JSON final answer or a tool call's arguments: llguidance's mask for the schema, then the
  terminator (`<|return|>` / `<|call|>`);
- reasoning, preambles and a plain final answer stay free text: no grammar runs, only the control
  tokens that would break the structure are removed (reasoning must end with `<|end|>`);
- `<|start|>assistant` after a message ends is forced.
Reasoning has a token budget (`reasoning_limit`): past it the current reasoning message is ended and
only answering messages may follow, so that an answer the request requires always gets its share of
max_tokens.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.harmony import CALL, END, RETURN
from engine.structured_output import ResponseFormat, ToolChoice, header_grammar, json_grammar
from engine.tokenizer import Tokenizer

START, MESSAGE = 200006, 200008
_NEVER_SAMPLED = 199999  # <|endoftext|>: llguidance's end-of-sequence; our grammars end in harmony's own tokens
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}  # `() => any` tools
# Fewest reply tokens a required answer keeps when reasoning is cut (else a quarter of max_tokens):
# about 10 go to `<|end|><|start|>assistant` and the answer's header.
_ANSWER_RESERVE = 32
_HEADER = re.compile(r"^<\|channel\|>(\w+)(?: to=functions\.(\S+))?( <\|constrain\|>json)?<\|message\|>$")


def grammar_tokenizer(tokenizer: Tokenizer):
    """llguidance's tokenizer for this vocabulary, from the same ranks and special tokens (~2 s for
    o200k: build once per engine)."""
    import llguidance

    from engine import o200k

    specials = {name: i for i, name in o200k.SPECIAL_TOKENS.items() if i < tokenizer.vocab_size}
    named = set(specials.values())
    specials.update({f"<|reserved_{i}|>": i for i in range(len(tokenizer.ranks), tokenizer.vocab_size)
                     if i not in named})
    return llguidance.LLTokenizer.from_tiktoken(encoder=tokenizer.ranks, special_tokens=specials,
                                                pattern=o200k.PATTERN, eos_token=_NEVER_SAMPLED,
                                                n_vocab=tokenizer.vocab_size)


@dataclass(frozen=True)
class AnswerRules:
    """What one request allows its reply to contain."""

    response_format: ResponseFormat | None
    tool_schemas: dict[str, dict]  # declared tool name -> JSON Schema of its arguments
    tool_choice: ToolChoice
    reasoning_limit: int | None    # reply tokens after which reasoning must end; None: no limit

    @classmethod
    def for_params(cls, params, max_new_tokens: int) -> AnswerRules:
        """The rules of a request's GenerationParams, for a reply of at most max_new_tokens."""
        limit = params.max_reasoning_tokens
        if limit is None and (params.response_format is not None or params.tool_choice.must_call):
            limit = max(0, max_new_tokens - max(_ANSWER_RESERVE, max_new_tokens // 4))
        schemas = {t.name: t.parameters if t.parameters is not None else _NO_ARGUMENTS for t in params.tools}
        return cls(params.response_format, schemas, params.tool_choice, limit)

    def headers(self, reasoning_allowed: bool) -> str:
        callable_tools = [] if self.tool_choice.mode == "none" else \
            [self.tool_choice.name] if self.tool_choice.name else list(self.tool_schemas)
        channels = ["analysis"] if reasoning_allowed else []
        if reasoning_allowed and callable_tools:
            channels.append("commentary")  # a preamble before calling
        answers = not self.tool_choice.must_call
        if answers and self.response_format is None:
            channels.append("final")
        return header_grammar(channels, answers and self.response_format is not None, callable_tools)


class ReplyConstraint:
    """Follows one reply; `restrict(logits)` before each sample, `push(token)` after it."""

    def __init__(self, rules: AnswerRules, llg_tokenizer, tokenizer: Tokenizer):
        import llguidance

        self._llg, self._llg_tokenizer, self._tokenizer = llguidance, llg_tokenizer, tokenizer
        self.rules = rules
        self._first_special = len(tokenizer.ranks)
        (self._assistant,) = tokenizer.encode("assistant")
        self._bitmask = np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.int32)
        self.tokens = 0                # reply tokens so far
        self.mask_seconds = 0.0        # time spent computing and applying masks
        self.done = False              # the reply's last message has ended
        self._mode = "header"          # "header" | "json" (both grammar-driven) | "free" | "forced"
        self._matcher = self._new_matcher(rules.headers(self._reasoning_allowed()))
        self._header: list[int] = []   # tokens of the header being read
        self._forced: list[int] = []   # in "forced": the tokens the structure dictates
        self._ends: tuple[int, ...] = ()  # in "free": the control tokens the text may end with
        self._reasoning = False        # in "free": the text is reasoning or a preamble (budgeted)

    def restrict(self, logits: torch.Tensor) -> None:
        """Sets the logits [V] of tokens the reply may not continue with to -inf, in place."""
        started = time.perf_counter()
        if self._mode == "forced" or (self._mode == "free" and self._reasoning and not self._reasoning_allowed()):
            only = self._forced[0] if self._mode == "forced" else END
            keep = logits[only].clone()
            logits.fill_(float("-inf"))
            logits[only] = keep
        elif self._mode == "free":
            ends = list(self._ends)
            keep = logits[ends].clone()
            logits[self._first_special:] = float("-inf")
            logits[ends] = keep
        else:
            self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
            allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:logits.shape[-1]]
            logits.masked_fill_(torch.from_numpy(allowed == 0), float("-inf"))
        self.mask_seconds += time.perf_counter() - started

    def push(self, token: int) -> None:
        """Follows the sampled token (one that restrict allowed)."""
        self.tokens += 1
        if self._mode == "forced":
            if token != self._forced.pop(0):
                raise RuntimeError(f"reply constraint: token {token} is not the one the format dictates")
            if not self._forced:  # `<|start|>assistant` is in: the next message's header
                self._start_header()
        elif self._mode == "free":
            if token == END:
                self._mode, self._forced = "forced", [START, self._assistant]
            elif token in self._ends:
                self.done = True
        else:
            if not self._matcher.consume_token(token):
                raise RuntimeError(f"reply constraint: token {token} rejected: {self._matcher.get_error()}")
            if self._mode == "json":
                self.done = token in (RETURN, CALL)
            else:
                self._header.append(token)
                if token == MESSAGE:
                    self._enter(self._tokenizer.decode(self._header))

    def _start_header(self) -> None:
        self._mode, self._header = "header", []
        self._matcher = self._new_matcher(self.rules.headers(self._reasoning_allowed()))

    def _enter(self, header: str) -> None:
        """Sets up the content of the message whose header was just written."""
        match = _HEADER.match(header)
        if match is None:
            raise RuntimeError(f"reply constraint: unexpected header {header!r}")
        channel, tool, json_answer = match.groups()
        if tool is not None:
            self._mode = "json"
            self._matcher = self._new_matcher(json_grammar(self.rules.tool_schemas[tool], "<|call|>"))
        elif json_answer:
            self._mode = "json"
            self._matcher = self._new_matcher(json_grammar(self.rules.response_format.schema, "<|return|>"))
        else:
            self._mode = "free"
            self._ends = (RETURN, END) if channel == "final" else (END,)
            self._reasoning = channel != "final"

    def _reasoning_allowed(self) -> bool:
        return self.rules.reasoning_limit is None or self.tokens < self.rules.reasoning_limit

    def _new_matcher(self, lark: str):
        matcher = self._llg.LLMatcher(self._llg_tokenizer, self._llg.LLMatcher.grammar_from_lark(lark), log_level=0)
        if matcher.is_error():
            raise RuntimeError(f"reply constraint: grammar failed to compile: {matcher.get_error()}")
        return matcher
