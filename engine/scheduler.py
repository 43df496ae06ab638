"""Scheduler: continuous batching of generation requests on the engine's thread.

One `step()` is one forward pass over the next token of every decoding sequence plus, within the
per-step token budget, the next chunk of the prompts still being prefilled: every weight is read
once for all of them (Transformer.forward_sequences). Up to `max_batch` sequences run; more wait
in arrival order. Requests join and leave between steps; sampling, seeds, stop handling and
cancellation stay per request. Thread-confined like the Engine: one thread submits and steps.

Memory: each running sequence reserves the KV bytes of its prompt plus its longest reply, and the
reservations never exceed the engine's KV budget (a request that could never fit is refused at
submit; one that does not fit now waits). A sequence resumes from the engine's prefix cache where
its prompt starts like an earlier sequence, and leaves its own state there when it ends.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from engine.chat import Completion, FinishReason, GenerationParams, GenerationResult, GenerationStep
from engine.harmony import CALL, END, RETURN
from engine.kv_cache import KVCache, KVMemoryError
from engine.messages import ChatMessage
from engine.prefix_cache import SharedPrefix
from engine.reply_constraint import AnswerRules, ReplyConstraint
from engine.sampling import Sampler

logger = logging.getLogger(__name__)


class Request:
    """One generation. `on_step` gets each GenerationStep as it is made, on the stepping thread;
    `should_cancel` is polled before every step. `running` turns true when it joins the batch (its
    prompt is being prefilled); once `done`, `result` (or `error`) is set."""

    def __init__(self, messages: Iterable[ChatMessage | Mapping[str, Any]], params: GenerationParams,
                 on_step: Callable[[GenerationStep], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None):
        self.messages, self.params = list(messages), params
        self.on_step = on_step or (lambda step: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.prompt_tokens = 0
        self.running = False
        self.result: GenerationResult | None = None
        self.error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


_MESSAGE_ENDS = frozenset({END, CALL, RETURN})
_REPLY_SNAPSHOTS = 4  # ring snapshots a reply may take at its own message ends (reserved up front)


class _Sequence:
    def __init__(self, request: Request, prompt: list[int], max_new_tokens: int, completion: Completion,
                 prompt_marks: set[int], reserved_bytes: int, constraint: ReplyConstraint | None):
        self.request, self.completion, self.max_new_tokens = request, completion, max_new_tokens
        self.constraint = constraint  # structured output: restricts each token's logits
        self.prompt, self.prompt_marks = prompt, prompt_marks
        self.pending = prompt      # tokens not yet run through the model: the prompt, then the last sample
        self.sampler = Sampler(request.params.temperature, request.params.top_p, request.params.seed)
        self.reserved_bytes = reserved_bytes
        self.cache: KVCache | None = None  # made when the sequence joins the batch
        self.shared = SharedPrefix()  # the cached prefix it resumed from
        self.reply_snapshots = _REPLY_SNAPSHOTS

    @property
    def decoding(self) -> bool:
        return bool(self.completion.tokens)


# Tokens per step while some sequence decodes: a prompt's chunk then delays every decoding stream by
# its whole prefill time (the 4-layer 20b shape prefills about 100 tokens/s on a 2-core AVX2 CPU:
# 0.6 s for 64 tokens, 5 s for 512; six times that at full depth), while chunks of 64 tokens still
# give the MoE kernel several tokens per expert.
DECODING_STEP_TOKENS = 64


class Scheduler:
    def __init__(self, engine, max_batch: int = 8, step_tokens: int | None = None,
                 decoding_step_tokens: int = DECODING_STEP_TOKENS):
        """
        Args:
            engine: the Engine whose model runs the steps.
            max_batch: sequences that run together; more wait.
            step_tokens: tokens per forward pass while nothing decodes (all for prefill chunks);
                default the engine's prefill chunk.
            decoding_step_tokens: tokens per forward pass while some sequence decodes (its tokens
                first, the rest for prefill chunks), at most step_tokens.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.engine, self.max_batch = engine, max_batch
        self.step_tokens = step_tokens or engine.options.prefill_chunk
        self.decoding_step_tokens = min(decoding_step_tokens, self.step_tokens)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self.reserved_bytes = 0  # of the running sequences; at most engine.kv_budget_bytes

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._running and not self._waiting

    def kv_bytes(self) -> int:
        # may be called from another thread while a step changes the batch: read each cache once
        return sum(cache.nbytes() for seq in list(self._running) if (cache := seq.cache) is not None)

    def submit(self, request: Request) -> None:
        """Queues a request; it joins the batch at a coming step.

        Raises:
            ContextLimitError: the prompt leaves no room for a reply.
            KVMemoryError: prompt and reply need more KV memory than the budget.
            ValueError: bad messages.
        """
        prompt, max_new = self.engine.prompt_for(request.messages, request.params)
        # Where conversations branch, so where the rings are kept: after every message, and at the
        # prompt's end (the next turn resumes there) and one before it (the same prompt again still
        # runs its last token).
        marks = {i + 1 for i, t in enumerate(prompt) if t in _MESSAGE_ENDS} | {len(prompt) - 1, len(prompt)}
        needed = KVCache.bytes_for(self.engine.config, self.engine.model.dtype, len(prompt) + max_new,
                                   snapshots=len(marks) + _REPLY_SNAPSHOTS)
        budget = self.engine.kv_budget_bytes
        if needed > budget:
            raise KVMemoryError(
                f"the request needs {needed / 2**20:.1f} MiB of KV cache ({len(prompt)} prompt tokens + "
                f"{max_new} reply tokens) but the KV budget is {budget / 2**20:.1f} MiB: ask for fewer "
                f"max_tokens, shorten the conversation, or raise the budget (--kv-cache-mb)")
        constraint = None
        if request.params.constrained:
            constraint = ReplyConstraint(AnswerRules.for_params(request.params, max_new),
                                         self.engine.grammar_tokenizer, self.engine.tokenizer)
        request.prompt_tokens = len(prompt)
        self._waiting.append(_Sequence(request, prompt, max_new,
                                       Completion(self.engine.harmony.parser(), request.params, len(prompt)),
                                       marks, needed, constraint))

    @torch.inference_mode()
    def step(self) -> None:
        """One forward pass for the running sequences (after admitting waiting ones); finished
        requests get their result and leave."""
        for seq in [s for s in self._running + list(self._waiting) if s.request.should_cancel()]:
            self._finish(seq, "cancelled")
        while (self._waiting and len(self._running) < self.max_batch
               and self.reserved_bytes + self._waiting[0].reserved_bytes <= self.engine.kv_budget_bytes):
            self._admit(self._waiting.popleft())
        batch = self._plan()
        if not batch:
            return
        ends, sampling, row = [], [], -1
        for seq, n in batch:
            row += n
            if n == len(seq.pending):  # its prompt is all in: the last row's logits give the next token
                ends.append(row)
                sampling.append(seq)
        try:
            hidden = self.engine.model.forward_sequences([torch.tensor(seq.pending[:n]) for seq, n in batch],
                                                         [seq.cache for seq, _ in batch])
            logits = self.engine.model.unembed(hidden[ends])
        except Exception as e:  # the pass failed for all of them; the scheduler goes on with others
            logger.exception("a forward pass of %d sequence(s) failed", len(batch))
            for seq, _ in batch:
                self._fail(seq, e)
            return
        for seq, n in batch:
            seq.pending = seq.pending[n:]
        for seq, row_logits in zip(sampling, logits):
            self._advance(seq, row_logits)

    def _admit(self, seq: _Sequence) -> None:
        """Joins the batch: resumes from the longest cached prefix, marks where its rings are kept."""
        cache = seq.cache = self.engine.new_cache(max_context=len(seq.prompt) + seq.max_new_tokens)
        self.reserved_bytes += seq.reserved_bytes
        if self.engine.prefix_cache.enabled:
            seq.shared = self.engine.prefix_cache.resume(seq.prompt, cache)
            seq.pending = seq.prompt[seq.shared.position:]
            seq.completion.cached_tokens = seq.shared.position
        cache.marks.update(p for p in seq.prompt_marks if p > cache.position)
        seq.request.running = True
        self._running.append(seq)

    def _plan(self) -> list[tuple[_Sequence, int]]:
        """(sequence, tokens it runs this step): one for each decoding sequence, then prefill chunks
        in arrival order within what remains of the step's budget (at least one token)."""
        decoding = sum(seq.decoding for seq in self._running)
        budget = max((self.decoding_step_tokens if decoding else self.step_tokens) - decoding, 1)
        batch = []
        for seq in self._running:
            if seq.decoding:
                batch.append((seq, 1))
            elif budget > 0:
                n = min(len(seq.pending), budget)
                budget -= n
                batch.append((seq, n))
        return batch

    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> None:
        try:
            if seq.constraint is not None:
                seq.constraint.restrict(logits)
            token = seq.sampler(logits)
            if seq.constraint is not None:
                seq.constraint.push(token)
            step = seq.completion.push(token)
            seq.request.on_step(step)
        except Exception as e:  # this request's own failure (its callback, say): the others go on
            logger.exception("a request failed while decoding")
            self._fail(seq, e)
            return
        if seq.completion.ended:
            self._finish(seq, "stop")
        elif len(seq.completion.tokens) >= seq.max_new_tokens:
            self._finish(seq, "length")
        else:
            seq.pending = [token]
            if token in _MESSAGE_ENDS and seq.reply_snapshots:  # a message of the reply ends here
                seq.reply_snapshots -= 1
                seq.cache.marks.add(seq.cache.position + 1)

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        if seq.constraint is not None:
            seq.completion.mask_seconds = seq.constraint.mask_seconds
        seq.request.result = seq.completion.result(reason)
        if seq.cache is not None and self.engine.prefix_cache.enabled:
            self.engine.prefix_cache.insert(seq.prompt + seq.completion.tokens, seq.cache, seq.shared)
        self._remove(seq)

    def _fail(self, seq: _Sequence, error: Exception) -> None:
        seq.request.error = error
        self._remove(seq)

    def _remove(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self.reserved_bytes -= seq.reserved_bytes
        else:
            self._waiting.remove(seq)
        seq.cache = None  # its KV memory goes with it (what the prefix cache kept stays there)
        seq.shared = SharedPrefix()
