"""Trains the demo model: the engine's own `Transformer` (reference ops, which are differentiable) on
conversations from `engine.demo.tasks`, rendered by the engine's harmony renderer.

What differs from running the model, and why:
- The experts are float parameters rounded to MXFP4 in every forward pass once quantization-aware
  training starts (`--qat-from`), with a straight-through gradient (`engine.demo.mxfp4`); the shipped
  checkpoint stores exactly those rounded values.
- Only the tokens the data uses (and every number token) have rows. Inputs go through a compact
  embedding whose rows are built from parts: a number token's ("7", "58", "347") from per-digit
  vectors, any other token's from its own vector plus per-character ones, so that a number's digits
  and a name's characters are readable from its row (`SpellingAwareEmbedding`). The softmax covers the
  model writes plus one term for every other token at logit 0 (log(V - n) of them), which is exactly
  the shipped model's distribution: their unembedding rows are zero. The output rows are the input
  rows of the same tokens plus a learned correction (tied), so that writing a number or a character
  the model has read starts as the identity (25 minutes on one core: loss per token on + and - 0.18
  against 0.32 untied, at about the same step).
- The model writes each digit it computes as its own token, each character of a name or value it
  copies into a call too, and a number it copies in the prompt's own tokens (decoded text is the same
  in every case): every token it writes is then one lookup.
- Some attention heads start with a job (`engine.demo.heads`): copy heads and heads that look a fixed
  number of tokens back.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from engine import ops
from engine.config import ModelConfig
from engine.demo import mxfp4
from engine.demo.heads import start_heads
from engine.demo.tasks import SKILLS, Example, Generator, Reply, made_up_names
from engine.harmony import HarmonyFormat
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.o200k import SPECIAL_TOKENS
from engine.ops import reference
from engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_SPECIAL = {text: token for token, text in SPECIAL_TOKENS.items()}
_DIGITS = re.compile(r"(\d)")


def reply_tokens(tokenizer: Tokenizer, replies: list[Reply]) -> list[int]:
    """The tokens the model writes after a prompt that ends with `<|start|>assistant`."""
    tokens: list[int] = []
    for i, reply in enumerate(replies):
        if i:
            tokens += [_SPECIAL["<|start|>"], *tokenizer.encode("assistant")]
        tokens.append(_SPECIAL["<|channel|>"])
        if reply.channel == "call":  # the declared name, copied from the declaration
            tokens += [*tokenizer.encode("commentary to=functions."), *as_in_prompt(tokenizer, reply.name),
                       *tokenizer.encode(" ")]
            tokens += [_SPECIAL["<|constrain|>"], *tokenizer.encode("json")]
        else:
            tokens += tokenizer.encode(reply.channel)
        tokens.append(_SPECIAL["<|message|>"])
        tokens += written_encode(tokenizer, reply.text, reply.words, reply.copied)
        last = i == len(replies) - 1
        tokens.append(_SPECIAL["<|call|>" if reply.channel == "call" else "<|return|>" if last else "<|end|>"])
    return tokens


def as_in_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """text in the tokens a prompt has it in after a space (" Oslo", "type get_weather"), the first
    without that space, since JSON and the call's header have none there."""
    tokens = tokenizer.encode(" " + text)
    first = tokenizer.decode(tokens[:1])
    if first.startswith(" ") and len(first) > 1:
        tokens = [*tokenizer.encode(first[1:]), *tokens[1:]]
    else:  # a lone space token: the text starts with what o200k does not join to a space
        tokens = tokens[1:]
    assert tokenizer.decode(tokens) == text, text
    return tokens


def written_encode(tokenizer: Tokenizer, text: str, words: tuple[str, ...] = (),
                   copied: tuple[str, ...] = ()) -> list[int]:
    """text's tokens as the model writes them: the `words` as in the prompt (`as_in_prompt`), the
    `copied` numbers in their own tokens, and every other digit a token of its own."""
    marked = [(s, "words") for s in words] + [(s, "copied") for s in copied]
    if not marked:
        return [token for piece in _DIGITS.split(text) if piece for token in tokenizer.encode(piece)]
    marked.sort(key=lambda item: len(item[0]), reverse=True)
    how = dict(marked)
    # Not inside a longer number: "12 + 3" is not in "112 + 34".
    pattern = re.compile("(" + "|".join(r"(?<!\d)" + re.escape(s) + r"(?!\d)" for s, _ in marked) + ")")
    tokens: list[int] = []
    for i, piece in enumerate(pattern.split(text)):
        if not i % 2:
            tokens += written_encode(tokenizer, piece)
        elif how[piece] == "words":
            tokens += as_in_prompt(tokenizer, piece)
        else:
            tokens += tokenizer.encode(piece)
    return tokens


def encode_example(fmt: HarmonyFormat, example: Example) -> tuple[list[int], int]:
    """(prompt + reply tokens, prompt length)."""
    prompt = fmt.render(example.messages, example.effort, tools=example.tools, current_date=example.current_date)
    return prompt + reply_tokens(fmt.tokenizer, example.reply), len(prompt)


@dataclass
class Vocabulary:
    """The tokens training uses. Input index 0 is every token not seen (a zero embedding, as in the
    shipped checkpoint); output indices cover the tokens the model writes."""

    inputs: list[int]
    outputs: list[int]

    @classmethod
    def collect(cls, fmt: HarmonyFormat, seed: int, examples: int) -> "Vocabulary":
        # Every number token (1-3 digits, leading zeros too) is in both: a fresh operand is never unseen.
        numbers = {tokenizer_id for width in (1, 2, 3) for n in range(10 ** width)
                   for tokenizer_id in fmt.tokenizer.encode(f"{n:0{width}d}")}
        seen, written = set(numbers), set(numbers)
        # Made-up names and codes in every form a prompt or a reply holds them: after a space, bare,
        # and as a call writes a copy (`as_in_prompt`).
        names = made_up_names()
        for pieces in fmt.tokenizer.encode_batch([*names, *(" " + name for name in names)]):
            seen.update(pieces)
            written.update(pieces)
        for name in names:  # what the model writes, it reads back
            copy = as_in_prompt(fmt.tokenizer, name)
            seen.update(copy)
            written.update(copy)
        generator = Generator(seed)
        for _ in range(examples):
            tokens, prompt = encode_example(fmt, generator.example())
            seen.update(tokens)
            written.update(tokens[prompt:])
        return cls([-1, *sorted(seen)], sorted(written))

    def tables(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """full id -> input index (0 when unseen), full id -> output index (-1 when never written)."""
        to_input = torch.zeros(vocab_size, dtype=torch.long)
        to_input[torch.tensor(self.inputs[1:])] = torch.arange(1, len(self.inputs))
        to_output = torch.full((vocab_size,), -1, dtype=torch.long)
        to_output[torch.tensor(self.outputs)] = torch.arange(len(self.outputs))
        return to_input, to_output


class SpellingAwareEmbedding(nn.Module):
    """Rows for the input vocabulary, made so that what a copy or a sum needs is readable from a row.

    A number token's row ("7", "58", "347") is made of parts only: a vector for its length plus one
    per (place counted from the right, digit), so "the units digit is 8" reads the same in every
    number. Any other token's row is its own vector plus one per (position, character) of its first
    characters, one for its length and one for a leading space, so " Oslo" in a prompt tells the
    characters a call writes one by one. Rows are scaled by 1/sqrt(parts) to keep one magnitude."""

    NUMBER_PARTS = 33  # place·10 + digit, then 30 + length - 1
    SPELLED = 12  # characters of a token's text that get a part
    CHARACTERS = 96  # printable ASCII, and one class for every other character

    def __init__(self, tokenizer: Tokenizer, vocabulary: Vocabulary, dim: int, generator: torch.Generator):
        super().__init__()
        self.free = nn.Parameter(torch.randn(len(vocabulary.inputs), dim, generator=generator) * 0.5)
        space_part = self.NUMBER_PARTS
        length_part = space_part + 1
        character_part = length_part + self.SPELLED
        rows, parts = [], []
        count = torch.ones(len(vocabulary.inputs))
        keep = torch.ones(len(vocabulary.inputs), 1)
        keep[0] = 0  # unseen tokens
        for index, token in enumerate(vocabulary.inputs[1:], start=1):
            if token in SPECIAL_TOKENS:
                continue
            text = tokenizer.decode([token])
            if text.isdigit() and len(text) <= 3:
                mine = [30 + len(text) - 1, *(place * 10 + int(digit) for place, digit in enumerate(reversed(text)))]
                keep[index] = 0  # numbers: parts only
                count[index] = len(mine)
            else:
                spaced = text.startswith(" ") and len(text) > 1
                core = text[1:] if spaced else text
                mine = [length_part + min(len(core), self.SPELLED) - 1]
                mine += [character_part + position * self.CHARACTERS + _character_class(ch)
                         for position, ch in enumerate(core[:self.SPELLED])]
                if spaced:
                    mine.append(space_part)
                count[index] = 1 + len(mine)
            rows += [index] * len(mine)
            parts += mine
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long))
        self.register_buffer("parts", torch.tensor(parts, dtype=torch.long))
        self.register_buffer("keep", keep)
        self.register_buffer("scale", count.rsqrt().unsqueeze(1))
        n_parts = character_part + self.SPELLED * self.CHARACTERS
        self.parts_table = nn.Parameter(torch.randn(n_parts, dim, generator=generator) * 0.5)

    def table(self) -> torch.Tensor:
        """[n_inputs, D]: row 0 (unseen tokens) stays zero."""
        return (self.free * self.keep).index_add(0, self.rows, self.parts_table[self.parts]) * self.scale


def _character_class(character: str) -> int:
    code = ord(character)
    return code - 32 if 32 <= code < 127 else 95


class QuantizedExperts(nn.Module):
    """The experts as float parameters, rounded to MXFP4 in the forward pass when `quantize` is set;
    the arithmetic is the reference ops' own (`reference.moe`)."""

    def __init__(self, config: ModelConfig, generator: torch.Generator):
        super().__init__()
        E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.alpha, self.limit, self.quantize = config.swiglu_alpha, config.swiglu_limit, False
        self.gate_up = nn.Parameter(torch.randn(E, 2 * I, D, generator=generator) / math.sqrt(D))
        self.gate_up_bias = nn.Parameter(torch.zeros(E, 2 * I))
        self.down = nn.Parameter(torch.randn(E, D, I, generator=generator) / math.sqrt(I) / math.sqrt(2 * config.num_hidden_layers))
        self.down_bias = nn.Parameter(torch.zeros(E, D))

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return mxfp4.fake_quantize(w) if self.quantize else w

    def forward(self, x, expert_ids, expert_weights):
        return reference.moe(x, expert_ids, expert_weights, lambda e: self.weight(self.gate_up[e]), self.gate_up_bias,
                             lambda e: self.weight(self.down[e]), self.down_bias, self.alpha, self.limit)


class DemoModel(nn.Module):
    """The engine's Transformer with trainable weights, the compact embedding and output rows."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, vocabulary: Vocabulary, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config, self.vocabulary = config, vocabulary
        self.transformer = Transformer(config, torch.float32)
        self.embedding = SpellingAwareEmbedding(tokenizer, vocabulary, config.hidden_size, g)
        # Output rows start as the input rows of the same tokens (tied), so that writing a number or a
        # character the model has read is the identity; the correction learns what differs.
        input_index = {token: i for i, token in enumerate(vocabulary.inputs)}
        self.register_buffer("output_rows", torch.tensor([input_index[t] for t in vocabulary.outputs]))
        self.unembedding_correction = nn.Parameter(torch.zeros(len(vocabulary.outputs), config.hidden_size))
        self.weights = nn.ParameterDict()
        for name, buffer in list(self.transformer.named_buffers()):
            if name.startswith(("embed_tokens", "lm_head")) or ".experts." in name:
                continue
            self.weights[name.replace(".", "__")] = nn.Parameter(initial_weight(name, buffer.shape, config, g))
        start_heads(self.weights, config, g)
        for layer in self.transformer.layers:
            layer.mlp.experts = QuantizedExperts(config, g)
        for module in self.transformer.modules():  # forward fills them from the parameters above
            module._non_persistent_buffers_set.update(module._buffers)
        self.transformer.bind_device(torch.device("cpu"))
        self.rest_logit = math.log(config.vocab_size - len(vocabulary.outputs))

    def unembedding(self) -> torch.Tensor:
        """[n_outputs, D]"""
        return self.embedding.table()[self.output_rows] + self.unembedding_correction

    def set_quantized(self, on: bool) -> None:
        for layer in self.transformer.layers:
            layer.mlp.experts.quantize = on

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] input indices -> hidden [B, T, D]."""
        for name, parameter in self.weights.items():  # the transformer reads them as its buffers
            *path, leaf = name.split("__")
            module = self.transformer.get_submodule(".".join(path))
            module._buffers[leaf] = parameter
        self.transformer.embed_tokens._buffers["weight"] = self.embedding.table()
        cache = KVCache(self.config, ids.shape[0], torch.float32, torch.device("cpu"), ids.shape[1])
        return self.transformer(ids, cache)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [M, D], targets [M] output indices -> (cross-entropy [M], correct argmax [M])."""
        logits = hidden @ self.unembedding().T  # [M, n_out]
        rest = torch.full((logits.shape[0], 1), self.rest_logit)
        full = torch.cat((logits, rest), dim=-1)
        return nn.functional.cross_entropy(full, targets, reduction="none"), full.argmax(-1) == targets


def initial_weight(name: str, shape: torch.Size, config: ModelConfig, g: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(("bias", "sinks")):
        return torch.zeros(shape)
    fan_in = shape[-1]
    scale = 1 / math.sqrt(fan_in)
    if name.endswith("o_proj.weight"):
        scale /= math.sqrt(2 * config.num_hidden_layers)
    return torch.randn(shape, generator=g) * scale


@dataclass
class TrainSettings:
    seed: int = 0
    minutes: float = 95.0
    steps: int | None = None  # when set, the schedule runs over this many steps instead of `minutes`
    batch_tokens: int = 4096
    learning_rate: float = 3e-3
    qat_from: float = 0.3  # fraction of the steps after which the experts train rounded to MXFP4
    vocabulary_examples: int = 30000
    chain: int = 3  # requests per sequence where they can follow one another (BatchStream)
    threads: int | None = None
    # Where the training state (weights, optimizer, data stream, step, time) is kept, written every
    # `save_minutes` and at the end; a run whose file exists goes on from it (Ctrl-C loses at most
    # `save_minutes`). The settings that shape the run must be the same (`RESUMABLE_WITH_CHANGES` aside).
    state_file: Path | None = None
    save_minutes: float = 5.0
    log_seconds: float = 60.0  # between the progress lines


# May differ between a run and its resumption: how long it goes and how it is run.
RESUMABLE_WITH_CHANGES = ("minutes", "steps", "threads", "state_file", "save_minutes", "log_seconds")


class BatchStream:
    """Batches of about `batch_tokens` tokens: examples drawn fresh, grouped by length to pad little.

    With `chain` > 1, an example without tools is followed in the same sequence by up to chain - 1
    more user requests (arithmetic or about itself) and their replies, as further turns of one
    conversation: the system message, most of a short example's prompt, is then paid once for them
    all. (Rendered for inference, earlier turns drop their reasoning; chained, they keep it.)"""

    def __init__(self, fmt: HarmonyFormat, vocabulary: Vocabulary, seed: int, batch_tokens: int, chain: int = 1):
        self.fmt, self.generator, self.batch_tokens, self.chain = fmt, Generator(seed), batch_tokens, chain
        self.to_input, self.to_output = vocabulary.tables(fmt.tokenizer.vocab_size)
        self.pool: list[tuple[list[int], list[tuple[int, int, int]]]] = []

    def _sequence(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """tokens, and the replies in them as (first token, end, index in SKILLS)."""
        example = self.generator.example()
        tokens, prompt = encode_example(self.fmt, example)
        replies = [(prompt, len(tokens), SKILLS.index(example.skill))]
        if self.chain > 1 and not example.tools and example.skill in ("add", "subtract", "multiply", "about"):
            end_of_system = tokens.index(_SPECIAL["<|end|>"]) + 1
            for _ in range(self.chain - 1):
                follow = self.generator.chained_turn(example.effort, example.current_date)
                more, more_prompt = encode_example(self.fmt, follow)
                assert more[:end_of_system] == tokens[:end_of_system]  # the same system message
                more = more[end_of_system:]
                replies.append((len(tokens) + more_prompt - end_of_system, len(tokens) + len(more),
                                SKILLS.index(follow.skill)))
                tokens = tokens + more
        return tokens, replies

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input indices [B, T], positions of predicted tokens (flat, [M]), their output indices [M],
        the index in SKILLS of each one's example [M])."""
        while len(self.pool) < 256:
            self.pool.append(self._sequence())
        self.pool.sort(key=lambda item: len(item[0]))
        start = self.generator.rng.randrange(len(self.pool))  # a random length band
        chosen, longest = [], 0
        for item in self.pool[start:] + self.pool[:start]:
            longest = max(longest, len(item[0]))
            if chosen and longest * (len(chosen) + 1) > self.batch_tokens:
                break
            chosen.append(item)
        for item in chosen:
            self.pool.remove(item)
        T = max(len(tokens) for tokens, _ in chosen) - 1
        ids = torch.zeros(len(chosen), T, dtype=torch.long)
        flat, targets, skills = [], [], []
        for b, (tokens, replies) in enumerate(chosen):
            full = torch.tensor(tokens)
            ids[b, :len(tokens) - 1] = self.to_input[full[:-1]]
            for first, end, skill in replies:
                predicted = torch.arange(first - 1, end - 1)  # position t predicts token t + 1
                flat.append(b * T + predicted)
                targets.append(self.to_output[full[first:end]])
                skills.append(torch.full((len(predicted),), skill))
        return ids, torch.cat(flat), torch.cat(targets), torch.cat(skills)


def train(config: ModelConfig, tokenizer: Tokenizer, settings: TrainSettings, report=print) -> DemoModel:
    """Trains for settings.minutes of wall time, or settings.steps steps, going on from
    settings.state_file when it exists; returns the model (experts quantization-aware at the end).
    The reference ops are active while it trains (they are differentiable), and torch's deterministic
    algorithms: with two threads the backward of an indexed gather (the embedding's `parts_table[parts]`)
    otherwise accumulates in a varying order, so that two identical runs, or a resumed one, drift apart
    by float32 roundings that Adam amplifies on near-zero gradients (measured: the deterministic one is
    bit-exact and as fast). Denormals flush to zero while it trains: tiny gradients must not fall onto the
    slow denormal path. These settings and torch's thread count are restored (flushing to off, torch's
    default: torch cannot report whether it was on)."""
    previous, was_deterministic = ops.active_backend(), torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    ops.use_backend("reference")
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(config, tokenizer, settings, report)
    finally:
        ops.use_backend(previous)
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _train(config: ModelConfig, tokenizer: Tokenizer, settings: TrainSettings, report) -> DemoModel:
    torch.manual_seed(settings.seed)
    fmt = HarmonyFormat(tokenizer)
    started = time.perf_counter()
    saved = _load_state(settings)
    if saved:
        vocabulary = Vocabulary(*saved["vocabulary"])
        report(f"resuming {settings.state_file} at step {saved['step']} ({saved['elapsed'] / 60:.1f} min trained)")
    else:
        vocabulary = Vocabulary.collect(fmt, settings.seed + 1_000_003, settings.vocabulary_examples)
        report(f"vocabulary: {len(vocabulary.inputs)} input tokens, {len(vocabulary.outputs)} output tokens "
               f"({time.perf_counter() - started:.0f} s)")
    model = DemoModel(config, tokenizer, vocabulary, settings.seed)
    stream = BatchStream(fmt, vocabulary, settings.seed, settings.batch_tokens, settings.chain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    step, trained_before = 0, 0.0
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stream.generator.rng.setstate(saved["stream_rng"])
        stream.pool = saved["stream_pool"]
        step, trained_before = saved["step"], saved["elapsed"]
    budget = settings.minutes * 60
    train_started = time.perf_counter()
    logged, logged_step, last_save = time.perf_counter(), step, time.perf_counter()
    tally = torch.zeros(3, len(SKILLS), dtype=torch.float64)  # tokens, summed loss, right argmax per skill
    while True:
        elapsed = trained_before + time.perf_counter() - train_started
        progress = step / settings.steps if settings.steps else elapsed / budget
        if progress >= 1:
            break
        model.set_quantized(progress >= settings.qat_from)
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * warmup * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        ids, positions, targets, skills = stream.next()
        known = targets >= 0
        hidden = model(ids).reshape(-1, config.hidden_size)[positions[known]]
        losses, hits = model.loss(hidden, targets[known])
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        skills = skills[known]
        for row, values in enumerate((torch.ones_like(losses), losses.detach(), hits.double())):
            tally[row].index_add_(0, skills, values.double())
        if settings.state_file and time.perf_counter() - last_save >= settings.save_minutes * 60:
            _save_state(settings, vocabulary, model, optimizer, stream, step,
                        trained_before + time.perf_counter() - train_started)
            last_save = time.perf_counter()
        if time.perf_counter() - logged >= settings.log_seconds:
            tokens, summed, right = tally
            report(f"step {step}, {elapsed / 60:.1f} min: loss {summed.sum() / tokens.sum():.4f}, token accuracy "
                   f"{right.sum() / tokens.sum():.4f}, {'MXFP4' if progress >= settings.qat_from else 'float'} "
                   f"experts, {step - logged_step} steps in {time.perf_counter() - logged:.0f} s; loss by skill: "
                   + ", ".join(f"{skill} {summed[i] / tokens[i]:.3f}" for i, skill in enumerate(SKILLS) if tokens[i]))
            tally.zero_()
            logged, logged_step = time.perf_counter(), step
    trained = trained_before + time.perf_counter() - train_started
    if settings.state_file:
        _save_state(settings, vocabulary, model, optimizer, stream, step, trained)
    model.set_quantized(True)
    report(f"trained {step} steps in {trained / 60:.1f} min")
    return model


def _shape_of_run(settings: TrainSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in RESUMABLE_WITH_CHANGES}


def _save_state(settings: TrainSettings, vocabulary: Vocabulary, model: DemoModel, optimizer, stream: BatchStream,
                step: int, elapsed: float) -> None:
    """Written to a side file and renamed, so that a run stopped while saving keeps the last state."""
    state = {"settings": _shape_of_run(settings), "vocabulary": (vocabulary.inputs, vocabulary.outputs),
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "stream_rng": stream.generator.rng.getstate(), "stream_pool": stream.pool, "step": step, "elapsed": elapsed}
    partial = settings.state_file.with_name(settings.state_file.name + ".partial")
    torch.save(state, partial)
    partial.replace(settings.state_file)


def _load_state(settings: TrainSettings) -> dict | None:
    if not settings.state_file or not settings.state_file.exists():
        return None
    saved = torch.load(settings.state_file, weights_only=False)  # our own file: Python objects too
    if saved["settings"] != _shape_of_run(settings):
        differing = sorted(k for k, v in _shape_of_run(settings).items() if saved["settings"].get(k) != v)
        raise ValueError(f"{settings.state_file} was saved by a run with other settings ({', '.join(differing)}); "
                         f"use the same ones, or another state file")
    return saved
