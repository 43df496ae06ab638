"""The C++/CUDA ops (`torch.ops.gptoss.*`, built from csrc/) behind the same signatures as reference.py.

The library is compiled on first use with torch's cpp_extension (a minute, once; cached per machine
and CPU capability under the user cache dir) and loaded as a plain torch-ops library. A finished build
is loaded without ninja; one that was interrupted is built again, never waited on. An op without a
kernel for the CPU in this build keeps its reference implementation, said once in the log. This is
the only module that names `torch.ops.gptoss`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from engine.cache_dir import file_lock
from engine.ops import reference

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent.parent.parent / "csrc"
_LIBRARY = "gptoss_C"
_loaded: bool | None = None


def _cpu_flags() -> list[str]:
    # The build runs on the machine that uses it; AVX2+FMA code paths only where the CPU has them.
    capability = torch.backends.cpu.get_cpu_capability()
    return ["-mavx2", "-mfma", "-mf16c"] if capability in ("AVX2", "AVX512") else []


def _cuda_build() -> bool:
    # The CUDA kernels join the build when this torch has CUDA, a device is visible and nvcc exists
    # (cpp_extension compiles .cu sources with $CUDA_HOME/bin/nvcc).
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


def load() -> bool:
    """Builds (once) and loads the library; False, with one warning, when that is not possible."""
    global _loaded
    if _loaded is not None:
        return _loaded
    try:
        sources = sorted(str(p) for p in [CSRC / "registration.cpp", *CSRC.glob("cpu/*.cpp")])
        flags = ["-O3", "-fopenmp", "-std=c++17", *_cpu_flags()]
        cuda_flags: list[str] = []
        cuda_key = "cpu-only"
        headers = sorted(str(p) for p in CSRC.glob("**/*.h"))
        if _cuda_build():
            # .cu kernels (no torch headers, built by nvcc) + the glue that registers them for CUDA.
            sources += sorted(str(p) for p in [*CSRC.glob("cuda/*.cu"), *CSRC.glob("cuda/*.cpp")])
            headers += sorted(str(p) for p in CSRC.glob("cuda/*.cuh"))
            cuda_flags = ["-O3", "-std=c++17"]
            # cpp_extension builds for the visible GPUs' architectures: a cache entry per set of them.
            cuda_key = str(sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))
        digest = hashlib.sha256("".join([*flags, *cuda_flags, cuda_key, torch.__version__] +
                                        [Path(s).read_text() for s in sources + headers]).encode()).hexdigest()[:16]
        import platformdirs

        # Separate from GPTOSS_CACHE_DIR (models, tokenizers): one build serves every cache dir.
        build_dir = Path(os.environ.get("GPTOSS_EXTENSION_DIR") or platformdirs.user_cache_dir("gptoss-mcp")) / \
            f"ext-{digest}"
        build_dir.mkdir(parents=True, exist_ok=True)
        # One process at a time builds or loads build_dir.
        with file_lock(build_dir / "build.lock",
                       f"waiting for another process that is building the C++ ops extension in {build_dir}"):
            _load_or_build(build_dir, sources, flags, cuda_flags)
    except Exception as e:  # a missing compiler or a failed build must never stop the engine
        logger.warning("C++ ops extension unavailable, using the PyTorch reference ops: %s", e)
        _loaded = False
        return False
    _register_fakes()
    _loaded = True
    return True


def _load_or_build(build_dir: Path, sources: list[str], flags: list[str], cuda_flags: list[str]) -> None:
    # The directory is named by the hash of everything that goes into the build, so a finished build
    # is loaded as it is: ninja would recompile it whenever the sources are newer than its objects,
    # which is every fresh checkout of the same code.
    library, finished = build_dir / f"{_LIBRARY}.so", build_dir / "finished"
    if finished.exists() and library.exists():
        torch.ops.load_library(str(library))
        return
    # cpp_extension's own lock file (torch.utils.file_baton), which it never removes when the process
    # holding it dies: every later start would wait on it forever. Holding the build lock, we know that
    # no process of ours is building here, so a file left now is stale.
    stale = build_dir / "lock"
    if stale.exists():
        logger.warning("removing %s, left by a build of the C++ ops extension that was interrupted", stale)
        stale.unlink()
    logger.info("building the C++ ops extension (once, about a minute) in %s", build_dir)
    from torch.utils import cpp_extension

    cpp_extension.load(name=_LIBRARY, sources=sources, extra_cflags=flags, extra_cuda_cflags=cuda_flags,
                       extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False,
                       verbose=False)
    partial = build_dir / "finished.partial"
    partial.write_text(f"{_LIBRARY}.so built and loaded with torch {torch.__version__}\n")
    os.replace(partial, finished)  # atomic: a reader sees no marker or a whole one


def has_cpu_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gptoss::{op}", "CPU")


def linear(x, weight, bias=None):
    return torch.ops.gptoss.linear.default(x, weight, bias)


def linear_q8(x, qweight, scales, bias=None):
    return torch.ops.gptoss.linear_q8.default(x, qweight, scales, bias)


def quantize_q8_0(weight):
    if weight.device.type != "cpu":  # a CPU kernel only: on a GPU the twin runs at the device's bandwidth
        return reference.quantize_q8_0(weight)
    return torch.ops.gptoss.quantize_q8_0.default(weight)


def rms_norm(x, scale, eps):
    return torch.ops.gptoss.rms_norm.default(x, scale, eps)


def rope_(q, k, cos_sin, positions):
    torch.ops.gptoss.rope_.default(q, k, cos_sin, positions)


def sdpa_sinks(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos):
    return torch.ops.gptoss.sdpa_sinks.default(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos)


def sdpa_sinks_varlen(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos, q_lengths):
    return torch.ops.gptoss.sdpa_sinks_varlen.default(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos,
                                                      q_lengths)


def mxfp4_dequantize(blocks, scales, dtype):
    return torch.ops.gptoss.mxfp4_dequantize.default(blocks, scales, dtype)


def moe_mxfp4(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2,
              swiglu_alpha, swiglu_limit):
    return torch.ops.gptoss.moe_mxfp4.default(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1,
                                              w2_blocks, w2_scales, b2, swiglu_alpha, swiglu_limit)


def moe_mxfp4_ggml(x, expert_ids, expert_weights, gate, up, b1, down, b2, swiglu_alpha, swiglu_limit):
    return torch.ops.gptoss.moe_mxfp4_ggml.default(x, expert_ids, expert_weights, gate, up, b1, down, b2,
                                                   swiglu_alpha, swiglu_limit)


def cpu_kernels(dtype: torch.dtype) -> str:
    """The CPU kernel family this build runs for dtype on this machine: "amx", "avx512_bf16", "avx2"
    or "portable" (GPTOSS_CPU_ISA caps it)."""
    return torch.ops.gptoss.cpu_kernels.default(dtype)


def read_bandwidth(buffer: torch.Tensor, repeats: int) -> float:
    """Best GB/s of `repeats` reads of a contiguous CPU buffer, as the decode kernels read memory."""
    return torch.ops.gptoss.read_bandwidth.default(buffer, repeats)


def _register_fakes() -> None:
    # Output metadata for FakeTensor / torch.compile / opcheck.
    register = torch.library.register_fake

    @register("gptoss::linear")
    def _(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)

    @register("gptoss::linear_q8")
    def _(x, qweight, scales, bias):
        return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)

    @register("gptoss::quantize_q8_0")
    def _(weight):
        return (weight.new_empty(weight.shape, dtype=torch.int8),
                weight.new_empty((weight.shape[0], weight.shape[1] // 32), dtype=torch.float16))

    @register("gptoss::rms_norm")
    def _(x, scale, eps):
        return torch.empty_like(x)

    @register("gptoss::rope_")
    def _(q, k, cos_sin, positions):
        return None

    @register("gptoss::sdpa_sinks")
    def _(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos):
        return q.new_empty(q.shape, dtype=torch.float32)

    @register("gptoss::sdpa_sinks_varlen")
    def _(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos, q_lengths):
        return q.new_empty(q.shape, dtype=torch.float32)

    @register("gptoss::mxfp4_dequantize")
    def _(blocks, scales, dtype):
        return blocks.new_empty((*blocks.shape[:-2], blocks.shape[-2] * 32), dtype=dtype)

    @register("gptoss::moe_mxfp4")
    def _(x, expert_ids, expert_weights, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha, limit):
        return x.new_empty((x.shape[0], w2_blocks.shape[1]), dtype=torch.float32)

    @register("gptoss::moe_mxfp4_ggml")
    def _(x, expert_ids, expert_weights, gate, up, b1, down, b2, alpha, limit):
        return x.new_empty((x.shape[0], down.shape[1]), dtype=torch.float32)


def resolved_ops(names: tuple[str, ...]) -> dict[str, object]:
    """Each op's implementation: the kernel where this build has one for the CPU, else the reference."""
    chosen, missing = {}, []
    for name in names:
        if has_cpu_kernel(name):
            chosen[name] = globals()[name]
        else:
            chosen[name] = getattr(reference, name)
            missing.append(name)
    if missing:
        logger.info("no C++ kernel yet for %s: using the reference implementation", ", ".join(missing))
    return chosen
