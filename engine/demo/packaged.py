"""Where `train-demo` writes the demo weights by default, and the README of the checkpoint they
expand into (torch-free: the command line names the path before torch is loaded)."""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "gptoss-demo.safetensors"
README = ("# The gptoss-mcp demo model\n\n"
          "A small gpt-oss checkpoint (real format: MXFP4 experts, bf16 rest, o200k_harmony) trained by\n"
          "`gptoss-mcp train-demo` on synthetic arithmetic, tool-call and self-description tasks.\n"
          "Rows of tokens it never saw are zero. See the project README for its skills.\n")

