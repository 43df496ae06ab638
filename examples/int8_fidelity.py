"""How far `--weights int8` moves the model: next-token distributions of the int8 mode against the
bf16 mode and against float32 (the engine's reference precision), side by side with llama.cpp's
Q8_0 against its bf16 on the same checkpoint.

    python examples/int8_fidelity.py --model DIR [--text FILE] [--ctx 512] [--chunks 2]
        [--llama-perplexity BIN --gguf-bf16 FILE --gguf-q8 FILE]

The text is cut into `--chunks` windows of `--ctx` tokens and, as llama.cpp's `llama-perplexity`
does in its KL-divergence mode, only the second half of each window is scored: top-1 agreement, mean
KL(reference ‖ tested) and max |Δlogit| (ours only: llama-perplexity does not report logits).
llama.cpp's numbers come from `llama-perplexity --kl-divergence-base` on the bf16 GGUF, then
`--kl-divergence` on the Q8_0 GGUF, over the same text file.
"""

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from engine import Engine


def our_logits(model: str, dtype: str, weights: str | None, windows: list[list[int]]) -> list[torch.Tensor]:
    engine = Engine.load(model, dtype=dtype, weights=weights)
    half = len(windows[0]) // 2
    return [engine.logits(window)[half:] for window in windows]


def compare(reference: list[torch.Tensor], tested: list[torch.Tensor]) -> dict:
    ref, test = torch.cat(reference).double(), torch.cat(tested).double()
    log_p, log_q = ref.log_softmax(-1), test.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {"top1_agreement": round((ref.argmax(-1) == test.argmax(-1)).double().mean().item(), 5),
            "mean_kl": float(f"{kl.mean().item():.3g}"), "max_abs_dlogit": round((ref - test).abs().max().item(), 5),
            "tokens": ref.shape[0]}


def llama_cpp(binary: str, base: str, tested: str, text: str, ctx: int, chunks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        kld = str(Path(tmp) / "base.kld")
        common = ["-f", text, "-c", str(ctx), "--chunks", str(chunks), "-t", "2", "-b", str(ctx)]
        subprocess.run([binary, "-m", base, "--kl-divergence-base", kld, *common], check=True, capture_output=True)
        out = subprocess.run([binary, "-m", tested, "--kl-divergence-base", kld, "--kl-divergence", *common],
                             check=True, capture_output=True, text=True)
    log = out.stdout + out.stderr
    mean_kl = float(re.search(r"Mean\s+KLD:\s+([-\d.e]+)", log).group(1))
    same_top = float(re.search(r"Same top p:\s+([\d.]+)", log).group(1)) / 100
    return {"top1_agreement": round(same_top, 5), "mean_kl": float(f"{mean_kl:.3g}"), "max_abs_dlogit": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", default=str(Path(__file__).resolve().parent.parent / "README.md"))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--llama-perplexity", default=None, help="llama.cpp's llama-perplexity binary")
    parser.add_argument("--gguf-bf16", default=None)
    parser.add_argument("--gguf-q8", default=None)
    args = parser.parse_args()

    engine = Engine.load(args.model, dtype="bfloat16")
    ids = engine.tokenizer.encode(Path(args.text).read_text(encoding="utf-8"))
    if len(ids) < args.ctx * args.chunks:
        raise SystemExit(f"{args.text} has {len(ids)} tokens; {args.chunks} windows of {args.ctx} need more")
    windows = [ids[i * args.ctx:(i + 1) * args.ctx] for i in range(args.chunks)]
    del engine
    float32 = our_logits(args.model, "float32", None, windows)
    bf16 = our_logits(args.model, "bfloat16", None, windows)
    int8 = our_logits(args.model, "bfloat16", "int8", windows)
    report = {"ours_int8_vs_bf16": compare(bf16, int8), "ours_int8_vs_float32": compare(float32, int8),
              "ours_bf16_vs_float32": compare(float32, bf16)}
    if args.llama_perplexity:
        report["llama_cpp_q8_0_vs_bf16"] = llama_cpp(args.llama_perplexity, args.gguf_bf16, args.gguf_q8, args.text,
                                                     args.ctx, args.chunks)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
