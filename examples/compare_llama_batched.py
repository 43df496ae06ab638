"""Concurrent decoding, gptoss-mcp against llama.cpp's llama-batched-bench, interleaved in one run.

For each number of parallel sequences N, both engines prefill N separate prompts of the same length
and then decode them together; the figure is the aggregate decode speed (N × generated tokens per
second of decoding). Each round runs `gptoss-mcp bench --concurrency` and then `llama-batched-bench`
(`-npl`, prompts not shared), so slow minutes on a shared machine hit both; the best of all rounds is
compared. Prints one JSON object: every round's numbers, the best of each, and the ratios (ours /
llama.cpp) and each engine's scaling over one sequence.

    python examples/compare_llama_batched.py --model /tmp/bm4 --gguf /tmp/bm4-bf16.gguf \\
        --llama-batched-bench llama.cpp/build/bin/llama-batched-bench --parallel 1 2 4 8 --rounds 2

The GGUF comes from the same directory with llama.cpp's converter (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run_ours(args: argparse.Namespace) -> dict[int, float]:
    command = [sys.executable, "-m", "gptoss_mcp", "bench", "--model", args.model, "--threads", str(args.threads),
               "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
               "--repeats", str(args.repeats), "--concurrency", *map(str, args.parallel), "--json"]
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {s["streams"]: s["aggregate_decode_tokens_per_second"] for s in report["concurrency"]}


def run_llama_cpp(args: argparse.Namespace) -> dict[int, float]:
    context = max(args.parallel) * (args.prompt_tokens + args.gen_tokens)
    command = [args.llama_batched_bench, "-m", args.gguf, "-t", str(args.threads), "-c", str(context),
               "-b", "2048", "-ub", "512", "-npp", str(args.prompt_tokens), "-ntg", str(args.gen_tokens),
               "-npl", ",".join(map(str, args.parallel)), "--output-format", "jsonl"]
    best: dict[int, float] = {}
    for _ in range(args.repeats):  # llama-batched-bench runs each configuration once
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        for line in filter(str.strip, out.splitlines()):
            row = json.loads(line)  # speed_tg: pl·tg / t_tg, the aggregate decode speed
            best[row["pl"]] = max(best.get(row["pl"], 0.0), row["speed_tg"])
    return best


def compare(args: argparse.Namespace) -> dict:
    rounds = [{"gptoss_mcp": run_ours(args), "llama_cpp": run_llama_cpp(args)} for _ in range(args.rounds)]
    best = {engine: {n: max(r[engine][n] for r in rounds) for n in args.parallel}
            for engine in ("gptoss_mcp", "llama_cpp")}
    return {
        "threads": args.threads, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
        "rounds": rounds,
        "best_aggregate_decode_tokens_per_second": best,
        "ratio": {n: round(best["gptoss_mcp"][n] / best["llama_cpp"][n], 3) for n in args.parallel},
        "scaling_over_one": {engine: {n: round(best[engine][n] / best[engine][1], 3) for n in args.parallel}
                             for engine in best} if 1 in args.parallel else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="gpt-oss model directory (from gptoss-mcp make-model)")
    parser.add_argument("--gguf", required=True, help="the same model converted to GGUF")
    parser.add_argument("--llama-batched-bench", required=True, help="path of llama.cpp's llama-batched-bench")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8], help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128, help="each sequence's own prompt")
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine per round (best kept)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ours, then llama.cpp)")
    print(json.dumps(compare(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
