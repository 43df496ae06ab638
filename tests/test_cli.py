"""The `gptoss-mcp` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import Engine
from engine.presets import preset_config


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptoss_mcp", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_make_model_writes_a_loadable_checkpoint_in_both_layouts(tmp_path):
    out = tmp_path / "m"
    result = run_cli("make-model", str(out), "--preset", "tiny-odd", "--layers", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # logs go to stderr
    for name in ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "original/config.json",
                 "original/dtypes.json"):
        assert (out / name).is_file(), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    # The real repositories number shards from 00000 and write "of" the last index.
    assert shards[0] == f"model-00000-of-{len(shards) - 1:05d}.safetensors"
    assert Engine.load(out, dtype="float32").config == Engine.load(out / "original", dtype="float32").config
    assert Engine.load(out).config.num_hidden_layers == 2


def test_make_model_is_deterministic_per_seed(tmp_path):
    for name in ("a", "b"):
        assert run_cli("make-model", str(tmp_path / name), "--seed", "3", "--no-original").returncode == 0
    shards = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert shards and all((tmp_path / "a" / s).read_bytes() == (tmp_path / "b" / s).read_bytes() for s in shards)


def test_bad_arguments_exit_2(tmp_path):
    result = run_cli("make-model", str(tmp_path / "x"), "--preset", "huge")
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr
    assert run_cli("make-model", str(tmp_path / "x"), "--layers", "0").returncode == 2


def test_bench_on_a_broken_model_exits_3_naming_the_problem(tmp_path):
    result = run_cli("bench", "--model", str(tmp_path / "nowhere"))
    assert result.returncode == 3
    assert "nowhere" in result.stderr and "not found" in result.stderr


def test_bench_reports_json(tiny_dir):
    result = run_cli("bench", "--model", str(tiny_dir), "--prompt-tokens", "9", "5", "--gen-tokens", "3",
                     "--repeats", "2", "--concurrency", "1", "3", "--structured", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [p["prompt_tokens"] for p in report["prompts"]] == [9, 5]
    for prompt in report["prompts"]:
        assert prompt["prompt_tokens_per_second"] > 0
        assert 0 < prompt["time_to_first_token_seconds"] <= prompt["cold_time_to_first_token_seconds"]
    assert report["decode_tokens"] == 3 and report["decode_context_tokens"] == 9 and report["repeats"] == 2
    assert report["decode_tokens_per_second"] == max(report["decode_tokens_per_second_all"]) > 0
    assert len(report["decode_tokens_per_second_all"]) == 2
    assert report["peak_rss_bytes"] >= report["rss_after_load_bytes"] > 0
    assert report["ops_backend"] == "extension"  # built on first use on any machine with a C++ compiler
    assert report["cpu_kernels"] in {"amx", "avx512_bf16", "avx2", "portable"}
    assert report["memory_read_gbps"] > 0 and report["decode_ceiling_tokens_per_second"] > 0
    assert [c["streams"] for c in report["concurrency"]] == [1, 3]
    for c in report["concurrency"]:
        assert c["aggregate_decode_tokens_per_second"] == pytest.approx(
            c["streams"] * c["per_stream_decode_tokens_per_second"], rel=1e-3) and c["aggregate_decode_tokens_per_second"] > 0
    structured = report["structured_output"]
    assert structured["max_tokens"] == 3 and 0 < structured["json_reply_tokens"] <= 3
    assert structured["free_tokens_per_second"] > 0 and structured["json_tokens_per_second"] > 0
    assert structured["mask_ms_per_token"] > 0 and structured["grammar_tokenizer_seconds"] > 0


def test_generate_and_bench_take_the_demo_model(tmp_path):
    cache = {"GPTOSS_CACHE_DIR": str(tmp_path)}  # the demo is expanded there on first use
    result = run_cli("generate", "--model", "demo", "--temperature", "0", "What is 23 + 58?", env=cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("23 + 58 = 81."), result.stdout
    result = run_cli("bench", "--model", "demo", "--prompt-tokens", "9", "--gen-tokens", "3", "--repeats", "1",
                     "--json", env=cache)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decode_tokens_per_second"] > 0


def test_bench_rejects_a_non_positive_repeat_count(tiny_dir):
    result = run_cli("bench", "--model", str(tiny_dir), "--repeats", "0")
    assert result.returncode == 2 and "--repeats" in result.stderr


@pytest.mark.slow
def test_loading_a_20b_shaped_checkpoint_maps_without_reading_experts(tmp_path):
    """A 20b-wide layer: loading reads no weights, so RSS barely moves; experts stay packed."""
    out = tmp_path / "20b"
    assert run_cli("make-model", str(out), "--preset", "20b-shape", "--layers", "1", "--no-original").returncode == 0
    result = run_cli("bench", "--model", str(out), "--prompt-tokens", "4", "--gen-tokens", "1", "--repeats", "1",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    config = preset_config("20b-shape", layers=1)
    E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
    dequantised_expert_bytes = E * 3 * D * I * 2  # one layer's experts in bf16: 1.6 GB
    load_growth = report["rss_after_load_bytes"] - report["rss_before_load_bytes"]
    # Loading maps the 2.8 GB of shards and reads none of it: only float32 copies of small vectors.
    assert load_growth < min(64 * 2**20, dequantised_expert_bytes // 16), report
