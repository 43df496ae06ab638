"""gptoss-mcp against llama.cpp on the same checkpoint, same threads, interleaved in one run.

Each round runs `gptoss-mcp bench` and then `llama-bench`, so slow minutes on a shared machine
hit both; the best of all rounds and repeats is compared. Prints one JSON object: every round's
numbers, the best of each, and the ratios (ours / llama.cpp).

    python examples/compare_llama_cpp.py --model /tmp/m20b --gguf /tmp/m20b.gguf \\
        --llama-bench llama.cpp/build/bin/llama-bench --rounds 2

The GGUF comes from the same directory with llama.cpp's converter (see BENCHMARKS.md). llama-bench
decodes from an empty context, `gptoss-mcp bench` after its longest prompt: attention over those
few hundred keys is well under 1% of the bytes a 20b-shaped token reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run_ours(args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "gptoss_mcp", "bench", "--model", args.model, "--threads", str(args.threads),
               "--prompt-tokens", *map(str, args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
               "--repeats", str(args.repeats), "--json", *(["--weights", args.weights] if args.weights else [])]
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    speeds = {f"prompt_{p['prompt_tokens']}": p["prompt_tokens_per_second"] for p in report["prompts"]}
    speeds["decode"] = report["decode_tokens_per_second"]
    return {"tokens_per_second": speeds, "memory_read_gbps": report["memory_read_gbps"]}


def run_llama_cpp(args: argparse.Namespace) -> dict:
    command = [args.llama_bench, "-m", args.gguf, "-t", str(args.threads),
               "-p", ",".join(map(str, args.prompt_tokens)), "-n", str(args.gen_tokens),
               "-r", str(args.repeats), "-o", "json"]
    tests = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    speeds = {}
    for test in tests:  # one entry per prompt length (n_gen 0) and one for decoding (n_prompt 0)
        name = f"prompt_{test['n_prompt']}" if test["n_gen"] == 0 else "decode"
        speeds[name] = max(test["samples_ts"])
    return {"tokens_per_second": speeds}


def compare(args: argparse.Namespace) -> dict:
    rounds = []
    for _ in range(args.rounds):
        rounds.append({"gptoss_mcp": run_ours(args), "llama_cpp": run_llama_cpp(args)})
    best = {}
    for engine in ("gptoss_mcp", "llama_cpp"):
        names = rounds[0][engine]["tokens_per_second"]
        best[engine] = {name: max(r[engine]["tokens_per_second"][name] for r in rounds) for name in names}
    ratios = {name: round(best["gptoss_mcp"][name] / best["llama_cpp"][name], 3) for name in best["llama_cpp"]}
    return {"threads": args.threads, "rounds": rounds, "best_tokens_per_second": best, "ratio": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="gpt-oss model directory (from gptoss-mcp make-model)")
    parser.add_argument("--gguf", required=True, help="the same model converted to GGUF")
    parser.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench binary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", choices=["bf16", "int8"], default=None,
                        help="our weights mode (int8 against a Q8_0 GGUF: like with like)")
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each test inside one run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ours, then llama.cpp)")
    print(json.dumps(compare(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
