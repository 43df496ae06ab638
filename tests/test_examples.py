"""Each example runs against a generated model, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, model: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTOSS_CACHE_DIR": str(cache_dir)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, str(EXAMPLES / script), str(model)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_mcp_client_example(tiny_dir, tmp_path):
    result = _run("mcp_client.py", tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tools: ['generate', 'embed', 'set_reasoning_effort']") == 2
    assert result.stdout.count("embedding dimensions: 64") == 2 and "== Streamable HTTP" in result.stdout


def test_openai_agents_example(tiny_dir, tmp_path):
    result = _run("openai_agents.py", tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tools: ['generate', 'embed', 'set_reasoning_effort']" in result.stdout and "direct call:" in result.stdout


def test_openai_agents_chat_example_calls_the_python_tool_through_v1(tiny_dir, tmp_path):
    result = _run("openai_agents_chat.py", tiny_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tool calls: ['get_weather']" in result.stdout
    assert "final output: sunny in " in result.stdout  # the Python function's own result


def test_int8_fidelity_example_reports_our_three_comparisons(tiny_dir, tmp_path):
    env = {**os.environ, "GPTOSS_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(EXAMPLES / "int8_fidelity.py"), "--model", str(tiny_dir), "--ctx",
                             "128", "--chunks", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"ours_int8_vs_bf16", "ours_int8_vs_float32", "ours_bf16_vs_float32"}
    for row in report.values():
        assert row["tokens"] == 128 and 0 <= row["top1_agreement"] <= 1 and row["mean_kl"] >= 0
    # int8 moves the distribution more than bf16 rounding alone does, and only a little
    assert report["ours_int8_vs_float32"]["mean_kl"] >= report["ours_bf16_vs_float32"]["mean_kl"]
    assert report["ours_int8_vs_float32"]["top1_agreement"] >= 0.9


def test_claude_desktop_config_is_a_valid_host_entry():
    entry = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())["mcpServers"]["gpt-oss"]
    assert entry["command"].endswith("gptoss-mcp") and entry["args"][0] == "serve"


# Stands in for llama.cpp's llama-bench (a 17-minute build): answers `-o json` in its output format
# with fixed speeds and logs its arguments, so the harness's interleaving and arithmetic are checked;
# BENCHMARKS.md records the comparison against the real binary.
LLAMA_BENCH_STAND_IN = '''
import json, sys
with open(sys.argv[0] + ".log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
tests = [{"n_prompt": int(p), "n_gen": 0, "samples_ts": [2.0, 4.0]} for p in args["-p"].split(",")]
tests.append({"n_prompt": 0, "n_gen": int(args["-n"]), "samples_ts": [1.0, 0.5]})
print(json.dumps(tests))
'''


def test_compare_llama_cpp_example_interleaves_rounds_and_divides_best_by_best(tiny_dir, tmp_path):
    stand_in = tmp_path / "llama-bench"
    stand_in.write_text(f"#!{sys.executable}\n{LLAMA_BENCH_STAND_IN}")
    stand_in.chmod(0o755)
    command = [sys.executable, str(EXAMPLES / "compare_llama_cpp.py"), "--model", str(tiny_dir), "--gguf", "m.gguf",
               "--llama-bench", str(stand_in), "--prompt-tokens", "6", "9", "--gen-tokens", "2", "--repeats", "1",
               "--rounds", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GPTOSS_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert len(report["rounds"]) == 2
    assert (tmp_path / "llama-bench.log").read_text().splitlines() == ["-m m.gguf -t 2 -p 6,9 -n 2 -r 1 -o json"] * 2
    ours = report["best_tokens_per_second"]["gptoss_mcp"]
    assert report["best_tokens_per_second"]["llama_cpp"] == {"prompt_6": 4.0, "prompt_9": 4.0, "decode": 1.0}
    assert ours["decode"] == max(r["gptoss_mcp"]["tokens_per_second"]["decode"] for r in report["rounds"]) > 0
    assert report["ratio"] == {"prompt_6": round(ours["prompt_6"] / 4.0, 3),
                               "prompt_9": round(ours["prompt_9"] / 4.0, 3), "decode": round(ours["decode"], 3)}


# Stands in for llama.cpp's llama-batched-bench: answers `--output-format jsonl` in its format with
# fixed speeds (aggregate decode speed_tg = 3·N, except a slower first run) and logs its arguments.
LLAMA_BATCHED_BENCH_STAND_IN = '''
import json, os, sys
log_path = sys.argv[0] + ".log"
first = not os.path.exists(log_path)
with open(log_path, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
for n in map(int, args["-npl"].split(",")):
    print(json.dumps({"pp": int(args["-npp"]), "tg": int(args["-ntg"]), "pl": n, "speed_tg": (1.0 if first else 3.0) * n}))
'''


def test_compare_llama_batched_example_interleaves_rounds_and_divides_best_by_best(tiny_dir, tmp_path):
    stand_in = tmp_path / "llama-batched-bench"
    stand_in.write_text(f"#!{sys.executable}\n{LLAMA_BATCHED_BENCH_STAND_IN}")
    stand_in.chmod(0o755)
    command = [sys.executable, str(EXAMPLES / "compare_llama_batched.py"), "--model", str(tiny_dir), "--gguf",
               "m.gguf", "--llama-batched-bench", str(stand_in), "--parallel", "1", "3", "--prompt-tokens", "7",
               "--gen-tokens", "2", "--repeats", "1", "--rounds", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GPTOSS_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert len(report["rounds"]) == 2
    assert (tmp_path / "llama-batched-bench.log").read_text().splitlines() == [
        "-m m.gguf -t 2 -c 27 -b 2048 -ub 512 -npp 7 -ntg 2 -npl 1,3 --output-format jsonl"] * 2
    best = report["best_aggregate_decode_tokens_per_second"]
    assert best["llama_cpp"] == {"1": 3.0, "3": 9.0}  # the better round of the two
    ours = best["gptoss_mcp"]
    assert ours["3"] == max(r["gptoss_mcp"]["3"] for r in report["rounds"]) > 0
    assert report["ratio"] == {"1": round(ours["1"] / 3.0, 3), "3": round(ours["3"] / 9.0, 3)}
    assert report["scaling_over_one"]["llama_cpp"] == {"1": 1.0, "3": 3.0}


def test_demo_tool_round_trip_example(tmp_path):
    env = {**os.environ, "GPTOSS_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(EXAMPLES / "demo_tool_round_trip.py"), "Lima"], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'tool call: get_weather {"location": "Lima"}' in result.stdout
    assert "tool result: 19 °C, cloudy" in result.stdout
    answer = next(line for line in result.stdout.splitlines() if line.startswith("answer:"))
    assert "19 °C, cloudy" in answer, result.stdout
