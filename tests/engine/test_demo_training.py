"""The demo model's making: the task generator's answers, the reply tokens the engine's parser reads
back, MXFP4 rounding and packing, and the compact form expanding into a checkpoint whose logits
are the trained model's."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from engine import ops
from engine.demo import mxfp4
from engine.demo.heads import COPY_SCALE, OFFSETS, start_heads
from engine.demo.tasks import CODE_LETTERS, EFFORTS, SKILLS, Generator, arithmetic_working
from engine.demo.train import (BatchStream, DemoModel, TrainSettings, Vocabulary, encode_example, initial_weight,
                               as_in_prompt, train)
from engine.model import RotaryEmbedding, Transformer
from engine.harmony import HarmonyFormat
from engine.o200k import SPECIAL_TOKENS
from engine.ops import reference
from engine.presets import preset_config
from engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def harmony(tiny_dir):
    return HarmonyFormat(Tokenizer(tiny_dir / "tokenizer.json", preset_config("tiny").vocab_size))


def _check_step(line: str) -> None:
    """A column line 'x+y(+c)=t, write ...' / 'x-y(-b)=t' / 'x*y(+c)=t' adds up."""
    match = re.match(r"(?:\w+: )?(\d+)([-+*])(\d+)(?:([-+])(\d+))?=(\d+)", line)
    if not match:
        return False
    a, op, b, op2, c, total = match.groups()
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    if op2:
        value = value + int(c) if op2 == "+" else value - int(c)
    assert value == int(total), line
    return True


@pytest.mark.parametrize("effort", EFFORTS)
def test_arithmetic_working_adds_up_and_ends_with_the_result(effort):
    rng = Generator(3).rng
    for _ in range(400):
        op = rng.choice("+-*")
        top = 99 if op == "*" else 999
        a, b = rng.randint(0, top), rng.randint(0, top)
        working, result = arithmetic_working(a, op, b, effort)
        assert result == {"+": a + b, "-": a - b, "*": a * b}[op]
        lines = working.split("\n")
        assert lines[-1] == f"So {a} {op} {b} = {result}." or (effort == "low" and lines == [f"{a} {op} {b} = {result}."])
        checked = [_check_step(line) for line in lines[1:-1]]
        if effort != "low":  # every column has its line: one more for a final carry, and for products the summing
            assert sum(checked) >= max(len(str(a)), len(str(b))), working
        if effort == "low":
            assert len(lines) == 1  # at most one short line


def test_subtraction_compares_from_the_left_and_names_the_larger_number():
    rng = Generator(5).rng
    for _ in range(400):
        a, b = rng.randint(0, 10 ** rng.randint(1, 3) - 1), rng.randint(0, 10 ** rng.randint(1, 3) - 1)
        line = arithmetic_working(a, "-", b, "medium")[0].split("\n")[1]
        assert line.startswith(f"Compare {a} and {b}: ")
        if a == b:
            assert "so they are equal." in line
            continue
        assert f"so {max(a, b)} is larger" in line and line.endswith(
            f": compute {b} - {a} and make it negative." if a < b else "larger."), line
        if len(str(a)) == len(str(b)):  # every digit pair written up to the first that differs, and that one right
            pairs = re.findall(r"(\d)([=<>])(\d)", line)
            assert "".join(x for x, _, _ in pairs) == str(a)[:len(pairs)]
            assert "".join(y for _, _, y in pairs) == str(b)[:len(pairs)]
            assert [r for _, r, _ in pairs] == ["="] * (len(pairs) - 1) + ["<" if a < b else ">"], line


def test_generated_examples_are_consistent():
    generator = Generator(11)
    for _ in range(300):
        example = generator.example()
        assert example.messages[-1]["role"] in ("user", "tool") and example.effort in EFFORTS
        if example.skill == "tool_call":
            call = example.reply[-1]
            declared = {t["function"]["name"]: t["function"] for t in example.tools}
            assert call.channel == "call" and call.name == example.expected["tool"] in declared
            arguments = json.loads(call.text)
            jsonschema.validate(arguments, declared[call.name]["parameters"])
            assert arguments == example.expected["arguments"]
            for value in arguments.values():  # the values come from the request
                assert str(value) in example.messages[-1]["content"]
        elif example.skill == "tool_answer":
            assert example.expected["result"] in example.reply[-1].text
        else:
            assert example.reply[-1].channel == "final"


def test_reply_tokens_read_back_through_the_engine_parser(harmony):
    """The training targets are what the engine's harmony parser turns into answers and tool calls,
    with every computed digit a token of its own."""
    generator = Generator(5)
    digits = {harmony.tokenizer.encode(str(d))[0] for d in range(10)}
    for _ in range(60):
        example = generator.example()
        full, prompt_length = encode_example(harmony, example)
        prompt, tokens = full[:prompt_length], full[prompt_length:]
        parser = harmony.parser()
        for token in tokens:
            parser.push(token)
        parsed = parser.result()
        assert parsed.analysis == example.reply[0].text
        if example.reply[-1].channel == "call":
            assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(example.reply[-1].name, example.reply[-1].text)]
        else:
            assert parsed.final == example.reply[-1].text and not parsed.tool_calls
        copied = " ".join(c for reply in example.reply for c in reply.copied)
        for token in tokens:  # a number with more than one digit in a token is a copy from the prompt
            text = harmony.tokenizer.decode([token])
            assert not (any(ch.isdigit() for ch in text) and token not in digits) or text in copied, text
        for reply in example.reply:  # names and values copied into a call: as the prompt has them
            for value in reply.words:
                written, in_prompt = as_in_prompt(harmony.tokenizer, value), harmony.tokenizer.encode(" " + value)
                after_first = in_prompt[1:]  # the first token loses its space, the others are the prompt's
                assert harmony.tokenizer.decode(written) == value, value
                assert written[len(written) - len(after_first):] == after_first, value
                assert any(tokens[i:i + len(written)] == written for i in range(len(tokens))), value
                assert any(prompt[i:i + len(in_prompt)] == in_prompt for i in range(len(prompt))), value


@pytest.mark.parametrize("shape", [(3, 32), (2, 5, 96), (4, 7, 3, 64)])
def test_mxfp4_packing_stores_exactly_the_rounded_values(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 8, (*shape[:-1], 1), generator=g).float())
    w[..., :32] = 0.0 if shape[0] == 3 else w[..., :32]  # an all-zero block
    rounded = mxfp4.fake_quantize(w)
    blocks, scales = mxfp4.pack(w)
    assert blocks.shape == (*shape[:-1], shape[-1] // 32, 16) and scales.shape == (*shape[:-1], shape[-1] // 32)
    assert torch.equal(reference.mxfp4_dequantize(blocks, scales, torch.float32), rounded)
    # nothing clipped: each block's error is at most half its largest FP4 step (2 · 2^e)
    step = torch.exp2(scales.float() - 127) * 2
    error = (rounded - w).reshape(*shape[:-1], -1, 32).abs().amax(-1)
    assert (error <= step / 2).all()
    w.requires_grad_(True)
    mxfp4.fake_quantize(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through


def test_the_expanded_checkpoint_gives_the_trained_model_logits(tmp_path, harmony):
    """A few seconds of training on the tiny shape, then compact form -> checkpoint -> Engine: the
    engine's logits are the trained model's (its weights rounded to bf16 as the checkpoint stores
    them), and every token the model never writes has logit exactly 0."""
    from engine import Engine
    from engine.demo.package import expand, save_compact

    config = preset_config("tiny")
    model = train(config, harmony.tokenizer, TrainSettings(seed=1, minutes=0.05, vocabulary_examples=200),
                  report=lambda line: None)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    composed = model.embedding.table  # number rows are sums of parts: the checkpoint stores them rounded
    model.embedding.table = lambda: composed().to(torch.bfloat16).float()
    tied = model.unembedding  # the input rows plus a correction: stored rounded too
    model.unembedding = lambda: tied().to(torch.bfloat16).float()
    save_compact(tmp_path / "compact.safetensors", model, version="test")
    expand(tmp_path / "compact.safetensors", tmp_path / "checkpoint", readme="test\n")

    example = Generator(2).example()
    tokens, _ = encode_example(harmony, example)
    to_input, _ = model.vocabulary.tables(config.vocab_size)
    previous = ops.active_backend()
    ops.use_backend("reference")
    try:
        with torch.no_grad():
            hidden = model(to_input[torch.tensor(tokens)].unsqueeze(0))[0]  # [T, D]
            want = hidden @ model.unembedding().T  # [T, n_out]
    finally:
        ops.use_backend(previous)
    engine = Engine.load(tmp_path / "checkpoint", dtype="float32")
    with torch.no_grad():
        logits = engine.model.unembed(engine.forward(torch.tensor([tokens]), engine.new_cache())[0])  # [T, V]
    written = torch.tensor(model.vocabulary.outputs)
    scale = want.abs().amax()
    assert (logits[:, written] - want).abs().amax() <= 1e-4 * scale  # float32 sums in another order
    others = torch.ones(config.vocab_size, dtype=torch.bool)
    others[written] = False
    assert not logits[:, others].any()


def test_vocabulary_maps_unseen_tokens_to_the_zero_row(harmony):
    vocabulary = Vocabulary.collect(harmony, seed=4, examples=50)
    to_input, to_output = vocabulary.tables(harmony.tokenizer.vocab_size)
    assert to_input[vocabulary.inputs[1]] == 1 and to_input[200_999] == 0
    assert to_output[vocabulary.outputs[-1]] == len(vocabulary.outputs) - 1 and to_output[200_999] == -1
    model = DemoModel(preset_config("tiny"), harmony.tokenizer, vocabulary, seed=0)
    assert not model.embedding.table()[0].any()


def test_made_up_names_can_be_read_and_written_whether_or_not_training_drew_them(harmony):
    """A fresh instance's made-up currency code, place or name is never an unseen token, and a call
    can write its copy: the vocabulary holds them all, not just those the sampled examples drew."""
    vocabulary = Vocabulary.collect(harmony, seed=4, examples=0)
    inputs, outputs = set(vocabulary.inputs), set(vocabulary.outputs)
    generator = Generator(99)
    for _ in range(300):
        code = "".join(generator.rng.choice(CODE_LETTERS) for _ in range(generator.rng.choice([2, 3])))
        tool_name = "_".join(generator.made_up_word(2) for _ in range(2)) + "_" + generator.made_up_word(1)
        for name in (code, generator.made_up_word().capitalize(), generator.made_up_word(2), tool_name):
            spaced = harmony.tokenizer.encode(" " + name)
            assert set(spaced) <= inputs and set(spaced) <= outputs, name
            assert set(as_in_prompt(harmony.tokenizer, name)) <= outputs, name


def test_chained_requests_share_one_system_message_and_every_reply_is_a_target(harmony):
    """BatchStream(chain=3): a tool-less arithmetic or about example is followed by more requests in
    the same sequence, under its system message; each reply span is exactly a reply's tokens."""
    vocabulary = Vocabulary.collect(harmony, seed=4, examples=50)
    stream = BatchStream(harmony, vocabulary, seed=6, batch_tokens=4096, chain=3)
    system_end = next(token for token, text in SPECIAL_TOKENS.items() if text == "<|end|>")
    chained = 0
    for _ in range(40):
        tokens, replies = stream._sequence()
        assert tokens.count(system_end) >= len(replies)
        text = harmony.tokenizer.decode(tokens)
        assert text.count("<|start|>system") == 1
        for first, end, skill in replies:
            reply = harmony.tokenizer.decode(tokens[first:end])
            assert reply.startswith("<|channel|>analysis<|message|>") and reply.endswith(("<|return|>", "<|call|>"))
            assert harmony.tokenizer.decode(tokens[first - 2:first]) == "<|start|>assistant"
        if len(replies) > 1:
            chained += 1
            assert all(SKILLS[skill] in ("add", "subtract", "multiply", "about") for _, _, skill in replies)
            after_first = harmony.tokenizer.decode(tokens[replies[0][1]:])  # one user turn per request
            assert after_first.count("<|start|>user") == len(replies) - 1 and "<|start|>developer" not in after_first
    assert chained >= 10



def test_offset_heads_look_their_offset_back_and_copy_heads_copy():
    """engine.demo.heads, on the weights as started: each offset head puts most of its attention
    `offset` tokens back at any position (its biases through the model's own RoPE, with its damped
    content term on random inputs); a copy head's value-output map is the identity on a subspace,
    scaled."""
    config = preset_config("demo")
    generator = torch.Generator().manual_seed(0)
    weights = {name.replace(".", "__"): initial_weight(name, buffer.shape, config, generator)
               for name, buffer in Transformer(config, torch.float32).named_buffers() if ".self_attn." in name}
    start_heads(weights, config, generator)
    hd, group = config.head_dim, config.num_attention_heads // config.num_key_value_heads
    cos_sin = RotaryEmbedding(config, torch.device("cpu")).cos_sin(300)
    x = torch.nn.functional.normalize(torch.randn(300, config.hidden_size, generator=generator), dim=-1)
    x = x * config.hidden_size ** 0.5  # as RMSNorm leaves it: rms 1
    for (layer, kv_head), offsets in OFFSETS.items():
        def projected(name: str) -> torch.Tensor:  # [T, heads, hd]
            w, b = (weights[f"layers__{layer}__self_attn__{name}_proj__{p}"] for p in ("weight", "bias"))
            return (x @ w.T + b).reshape(300, -1, hd)
        for j, offset in enumerate(offsets):
            q = projected("q")[:, kv_head * group + j].unsqueeze(0).unsqueeze(2).contiguous()  # [1, T, 1, hd]
            k = projected("k")[:, kv_head].unsqueeze(0).unsqueeze(2).contiguous()
            reference.rope_(q, k, cos_sin, torch.arange(300))
            for position in (offset + 10, 150, 299):
                attention = (q[0, position, 0] @ k[0, :position + 1, 0].T / hd ** 0.5).softmax(-1)
                assert int(attention.argmax()) == position - offset and attention.max() > 0.5, (layer, j, position)
    for layer in range(config.num_hidden_layers):
        if (layer, 0) in OFFSETS:
            continue
        v = weights[f"layers__{layer}__self_attn__v_proj__weight"][:hd]  # [hd, D]
        for head in range(group):
            o = weights[f"layers__{layer}__self_attn__o_proj__weight"][:, head * hd:(head + 1) * hd]  # [D, hd]
            eigenvalues = torch.linalg.eigvalsh(o @ v)  # symmetric: U·s·Uᵀ
            assert torch.allclose(eigenvalues[-hd:], torch.full((hd,), COPY_SCALE), atol=1e-5)
            assert eigenvalues[:-hd].abs().max() < 1e-5


def test_training_leaves_the_backend_determinism_thread_count_and_denormals_as_it_found_them(harmony):
    before = (ops.active_backend(), torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    train(preset_config("tiny"), harmony.tokenizer, TrainSettings(seed=3, steps=1, batch_tokens=512,
                                                                  vocabulary_examples=20,
                                                                  threads=2 if before[2] == 1 else 1),
          report=lambda line: None)
    assert (ops.active_backend(), torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
    smallest_normal = torch.tensor(torch.finfo(torch.float32).tiny)
    assert (smallest_normal / 4).item() > 0, "denormals still flush to zero after training"


def test_a_stopped_run_resumed_from_its_state_file_ends_where_an_unstopped_one_does(tmp_path, harmony):
    """Training stopped at step 2 of 4 (Ctrl-C after a save) and run again with the same state file
    ends with exactly the weights of a run that was never stopped: weights, optimizer
    and data stream are all restored. A state file from other settings is refused, naming them."""
    config = preset_config("tiny")

    def run(state_file, stop_at=None):
        def report(line: str) -> None:
            if stop_at and line.startswith(f"step {stop_at},"):
                raise KeyboardInterrupt
        settings = TrainSettings(seed=3, steps=4, batch_tokens=1024, vocabulary_examples=100, state_file=state_file,
                                 save_minutes=0, log_seconds=0)
        return train(config, harmony.tokenizer, settings, report=report)

    unstopped = run(tmp_path / "unstopped.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped.pt", stop_at=2)
    assert torch.load(tmp_path / "stopped.pt", weights_only=False)["step"] == 2
    resumed = run(tmp_path / "stopped.pt")
    assert torch.load(tmp_path / "stopped.pt", weights_only=False)["step"] == 4
    # Bit for bit: training runs torch's deterministic algorithms, so nothing may differ at all.
    for (name, a), (_, b) in zip(unstopped.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(b, a), f"{name}: at most {(b - a).abs().max():.3g} apart"
    with pytest.raises(ValueError, match="learning_rate"):
        train(config, harmony.tokenizer, TrainSettings(seed=3, steps=4, learning_rate=1e-2,
                                                       state_file=tmp_path / "stopped.pt"), report=lambda line: None)
