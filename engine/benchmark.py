"""Measures load time, memory, prompt processing and decode speed of one model directory.

Random ordinary-text token ids are fed straight to the model (no tokenizer, no sampling beyond
argmax), so the numbers are the engine's own; only the prefix-cache measurement goes through the
chat path (harmony prompts, the scheduler), since that is where the cache works. RSS is read from
/proc (Linux).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from engine import ops
from engine.chat import GenerationParams
from engine.engine import Engine
from engine.weights import decode_bytes_per_token


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_read_gbps(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best-of-N read bandwidth (GB/s) with torch's threads over a buffer far larger than the caches,
    read as the extension's decode kernels read their weights (4 streams per thread); a plain sum
    (one stream per thread, which reads less per second) on the reference ops."""
    buffer = torch.ones(nbytes // 4, dtype=torch.float32)
    gbps = ops.read_bandwidth(buffer, repeats)
    if gbps is not None:
        return gbps
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9


def run_benchmark(path: str | Path, prompt_tokens: Sequence[int] = (128, 512), gen_tokens: int = 32,
                  repeats: int = 3, threads: int | None = None, dtype: str = "bfloat16", device: str = "cpu",
                  seed: int = 0, concurrency: Sequence[int] = (), prefix_tokens: Sequence[int] = (),
                  structured: bool = False, weights: str | None = None) -> dict:
    """Loads the model; for each prompt length prefills a fresh cache `repeats` times; then decodes
    `gen_tokens` greedily `repeats` times after the longest prompt, measuring the read bandwidth
    after each decode round. For each number of streams in `concurrency`, that many sequences
    (each after its own shortest-length prompt) decode `gen_tokens` together, one forward pass per
    step as the server's scheduler runs them. For each length in `prefix_tokens`, the time to the
    first token of a conversation's next turn, cold and resumed from the prefix cache its previous
    turn left. With `structured`, a reply decoded under a JSON response format against the same
    reply free, through the chat path, and the grammar masks' share of it.

    The first prefill pages in the weights it touches (what a first request pays: reported as the
    cold time to first token); speeds are the best of the repeats, since a shared machine's noise
    only ever slows a run down.

    Returns:
        A JSON-ready dict of the measurements (seconds, tokens/s, bytes).
    """
    prompt_tokens, concurrency, prefix_tokens = list(prompt_tokens), list(concurrency), list(prefix_tokens)
    if not prompt_tokens or min(prompt_tokens + concurrency + prefix_tokens + [gen_tokens, repeats]) <= 0:
        raise ValueError(f"prompt lengths, stream counts, prefix lengths, gen_tokens and repeats must be "
                         f"positive, got {prompt_tokens}, {concurrency}, {prefix_tokens}, {gen_tokens}, {repeats}")
    if threads is not None:
        torch.set_num_threads(threads)
    rss_before = current_rss_bytes()
    started = time.perf_counter()
    engine = Engine.load(path, device=device, dtype=dtype, weights=weights)
    load_seconds = time.perf_counter() - started
    rss_after_load = current_rss_bytes()

    longest = max(prompt_tokens)
    ids = torch.randint(0, 199998, (1, longest), generator=torch.Generator().manual_seed(seed))
    prompts = []
    with torch.inference_mode():
        for length in prompt_tokens:
            seconds = []
            for _ in range(repeats):
                cache = engine.new_cache(max_context=length + repeats * gen_tokens)
                started = time.perf_counter()
                hidden = engine.forward(ids[:, :length], cache)
                token = engine.model.unembed(hidden[:, -1]).argmax(-1, keepdim=True)
                seconds.append(time.perf_counter() - started)
            prompts.append({
                "prompt_tokens": length,
                "cold_time_to_first_token_seconds": round(seconds[0], 3),
                "time_to_first_token_seconds": round(min(seconds), 3),
                "prompt_tokens_per_second": round(length / min(seconds), 3),
            })
        # decode after the longest prompt (its last prefill is in `cache` when it is listed last)
        if length != longest:
            cache = engine.new_cache(max_context=longest + repeats * gen_tokens)
            token = engine.model.unembed(engine.forward(ids, cache)[:, -1]).argmax(-1, keepdim=True)
        decode_seconds, bandwidths = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(gen_tokens):
                token = engine.model.unembed(engine.forward(token, cache)[:, -1]).argmax(-1, keepdim=True)
            decode_seconds.append(time.perf_counter() - started)
            bandwidths.append(memory_read_gbps())
        streams = [_concurrent_decode(engine, n, min(prompt_tokens), gen_tokens, repeats, seed) for n in concurrency]
    prefixes = [_next_turn(engine, n, repeats) for n in prefix_tokens]
    constrained = _structured_decode(engine, gen_tokens, repeats, seed) if structured else None

    config = engine.config
    decode_speed = gen_tokens / min(decode_seconds)
    bandwidth = max(bandwidths)
    weight_bytes = decode_bytes_per_token(config, int8=weights == "int8")
    ceiling = bandwidth * 1e9 / weight_bytes
    return {
        "model": str(path),
        "layers": config.num_hidden_layers,
        "experts": config.num_local_experts,
        "dtype": dtype,
        "weights": weights or "as stored",
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "ops_backend": ops.active_backend(),
        "cpu_kernels": engine.cpu_kernels,
        "repeats": repeats,
        "load_seconds": round(load_seconds, 3),
        "rss_before_load_bytes": rss_before,
        "rss_after_load_bytes": rss_after_load,
        "prompts": prompts,
        "decode_context_tokens": longest,
        "decode_tokens": gen_tokens,
        "decode_tokens_per_second": round(decode_speed, 3),
        "decode_tokens_per_second_all": [round(gen_tokens / s, 3) for s in decode_seconds],
        "rss_after_run_bytes": current_rss_bytes(),
        "peak_rss_bytes": peak_rss_bytes(),
        "kv_cache_bytes": cache.nbytes(),
        "decode_weight_bytes_per_token": weight_bytes,
        "memory_read_gbps": round(bandwidth, 2),
        # batch-1 decode must read every weight byte once per token: bandwidth / bytes is its ceiling
        "decode_ceiling_tokens_per_second": round(ceiling, 3),
        "decode_fraction_of_ceiling": round(decode_speed / ceiling, 3),
        "concurrency": streams,
        "prefix_cache": prefixes,
        "structured_output": constrained,
    }


def _concurrent_decode(engine: Engine, streams: int, prompt_tokens: int, gen_tokens: int, repeats: int,
                       seed: int) -> dict:
    """`streams` greedy sequences decoding together (Transformer.forward_sequences), best of `repeats`."""
    g = torch.Generator().manual_seed(seed + streams)
    seconds = []
    for _ in range(repeats):
        caches = [engine.new_cache(max_context=prompt_tokens + gen_tokens) for _ in range(streams)]
        tokens = []
        for cache in caches:  # prompts prefilled one by one: only the decoding is timed
            prompt = torch.randint(0, 199998, (1, prompt_tokens), generator=g)
            tokens.append(engine.model.unembed(engine.forward(prompt, cache)[0, -1]).argmax(-1, keepdim=True))
        started = time.perf_counter()
        for _ in range(gen_tokens):
            hidden = engine.model.forward_sequences(tokens, caches)  # [streams, D]: one row each
            tokens = list(engine.model.unembed(hidden).argmax(-1, keepdim=True))
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {"streams": streams, "aggregate_decode_tokens_per_second": round(streams * gen_tokens / best, 3),
            "per_stream_decode_tokens_per_second": round(gen_tokens / best, 3)}


# Filler for conversations of a given length: ordinary prose, so that it tokenizes like a real one.
_PROSE = ("The committee met on Tuesday to review the quarterly figures, and after a long discussion of "
          "shipping delays, supplier prices and the new warehouse in the north, it agreed to revisit the "
          "budget once the auditors had finished their work. ")


def _next_turn(engine: Engine, tokens: int, repeats: int) -> dict:
    """Time to first token of the next turn of a conversation whose previous turn's prompt has about
    `tokens` tokens: cold (empty prefix cache) and resumed from what that turn left. Best of `repeats`."""
    ids = engine.tokenizer.encode(_PROSE * (tokens // 40 + 1))
    overhead = len(engine.render([{"role": "user", "content": ""}]))
    history = [{"role": "user", "content": engine.tokenizer.decode(ids[:max(tokens - overhead, 1)])}]
    follow_up = history + [{"role": "assistant", "content": "Noted: the budget waits for the auditors."},
                           {"role": "user", "content": "Summarise the committee's decision in one sentence."}]
    params = GenerationParams(max_tokens=1, temperature=0)
    cold, warm = [], []
    for _ in range(repeats):
        engine.prefix_cache.clear()
        cold.append(_time_to_first_token(engine, follow_up, params)[0])
        engine.prefix_cache.clear()
        engine.generate(history, params).run()  # the previous turn leaves its state behind
        seconds, cached = _time_to_first_token(engine, follow_up, params)
        warm.append(seconds)
    prompt = len(engine.render(follow_up))
    return {"previous_turn_tokens": len(engine.render(history)), "prompt_tokens": prompt, "cached_tokens": cached,
            "cold_time_to_first_token_seconds": round(min(cold), 4),
            "cached_time_to_first_token_seconds": round(min(warm), 4),
            "cached_over_cold": round(min(warm) / min(cold), 4)}


def _time_to_first_token(engine: Engine, messages: list[dict], params: GenerationParams) -> tuple[float, int]:
    started = time.perf_counter()
    result = engine.generate(messages, params).run()
    return time.perf_counter() - started, result.usage.cached_tokens


def _structured_decode(engine: Engine, gen_tokens: int, repeats: int, seed: int) -> dict:
    """Decode speed (after the first token) of a reply whose every token is grammar-constrained (a
    JSON object answer, no reasoning) against the same request unconstrained, through the chat
    path; and the time the masks took per constrained token (computing llguidance's bitmask and
    applying it). Best of `repeats`; sampled with a fixed seed so that both replies run their full
    length on a random-weight model."""
    messages = [{"role": "user", "content": "Describe the committee's decision as a JSON object."}]
    started = time.perf_counter()
    engine.grammar_tokenizer  # noqa: B018 - built once per engine, on the first constrained request
    tokenizer_seconds = time.perf_counter() - started
    runs = {"free": [], "json": []}
    mask_ms, json_tokens = [], 0
    for _ in range(repeats):
        for kind, response_format in (("free", None), ("json", {"type": "json_object"})):
            params = GenerationParams(max_tokens=gen_tokens, temperature=1.0, seed=seed, max_reasoning_tokens=0,
                                      response_format=response_format)
            generation = engine.generate(messages, params)
            next(generation)  # the prompt's prefill and the first token: not decode time
            started = time.perf_counter()
            result = generation.run()
            runs[kind].append((result.usage.completion_tokens - 1) / (time.perf_counter() - started))
            if kind == "json":
                mask_ms.append(1e3 * result.mask_seconds / result.usage.completion_tokens)
                json_tokens = result.usage.completion_tokens
    return {"max_tokens": gen_tokens, "json_reply_tokens": json_tokens,
            "grammar_tokenizer_seconds": round(tokenizer_seconds, 3),
            "free_tokens_per_second": round(max(runs["free"]), 3),
            "json_tokens_per_second": round(max(runs["json"]), 3),
            "mask_ms_per_token": round(min(mask_ms), 4)}
