"""Measures load time, memory, prompt processing and decode speed of one model directory.

Random ordinary-text token ids are fed straight to the model (no tokenizer, no sampling beyond
argmax), so the numbers are the engine's own. RSS is read from /proc (Linux).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from engine import ops
from engine.engine import Engine
from engine.weights import decode_bytes_per_token


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_read_gbps(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best-of-N streaming read bandwidth (GB/s) with torch's threads: a sum over a buffer far larger
    than the caches."""
    buffer = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9


def run_benchmark(path: str | Path, prompt_tokens: int = 128, gen_tokens: int = 32, threads: int | None = None,
                  dtype: str = "bfloat16", device: str = "cpu", seed: int = 0) -> dict:
    """Loads the model, prefills `prompt_tokens`, then decodes `gen_tokens` greedily.

    Returns:
        A JSON-ready dict of the measurements (seconds, tokens/s, bytes).
    """
    if prompt_tokens <= 0 or gen_tokens <= 0:
        raise ValueError(f"prompt_tokens and gen_tokens must be positive, got {prompt_tokens}, {gen_tokens}")
    if threads is not None:
        torch.set_num_threads(threads)
    rss_before = current_rss_bytes()
    started = time.perf_counter()
    engine = Engine.load(path, device=device, dtype=dtype)
    load_seconds = time.perf_counter() - started
    rss_after_load = current_rss_bytes()

    ids = torch.randint(0, 199998, (1, prompt_tokens), generator=torch.Generator().manual_seed(seed))
    cache = engine.new_cache(max_context=prompt_tokens + gen_tokens)
    with torch.inference_mode():
        started = time.perf_counter()
        hidden = engine.forward(ids, cache)
        token = engine.model.unembed(hidden[:, -1]).argmax(-1, keepdim=True)
        first_token_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(gen_tokens):
            hidden = engine.forward(token, cache)
            token = engine.model.unembed(hidden[:, -1]).argmax(-1, keepdim=True)
        decode_seconds = time.perf_counter() - started

    config = engine.config
    bandwidth = memory_read_gbps()
    weight_bytes = decode_bytes_per_token(config)
    return {
        "model": str(path),
        "layers": config.num_hidden_layers,
        "experts": config.num_local_experts,
        "dtype": dtype,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "ops_backend": ops.active_backend(),
        "load_seconds": round(load_seconds, 3),
        "rss_before_load_bytes": rss_before,
        "rss_after_load_bytes": rss_after_load,
        "prompt_tokens": prompt_tokens,
        "time_to_first_token_seconds": round(first_token_seconds, 3),
        "prompt_tokens_per_second": round(prompt_tokens / first_token_seconds, 3),
        "decode_tokens": gen_tokens,
        "decode_tokens_per_second": round(gen_tokens / decode_seconds, 3),
        "rss_after_run_bytes": current_rss_bytes(),
        "peak_rss_bytes": peak_rss_bytes(),
        "kv_cache_bytes": cache.nbytes(),
        "decode_weight_bytes_per_token": weight_bytes,
        "memory_read_gbps": round(bandwidth, 2),
        # batch-1 decode must read every weight byte once per token: bandwidth / bytes is its ceiling
        "decode_ceiling_tokens_per_second": round(bandwidth * 1e9 / weight_bytes, 3),
        "decode_fraction_of_ceiling": round(gen_tokens / decode_seconds / (bandwidth * 1e9 / weight_bytes), 3),
    }
