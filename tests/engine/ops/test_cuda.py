"""The CUDA kernels (csrc/cuda): every .cu file compiles with nvcc for sm_80 and sm_90a without torch
headers, and the torch glue (torch_glue.cpp) compiles against torch's headers (both run wherever
nvcc is on PATH, GPU or not); on a CUDA device each op matches the reference on small, odd-sized
inputs and passes opcheck."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from engine.int8 import dequantize_q8_0, quantize_q8_0
from engine.ops import reference

from tests.engine.ops.naive import U32

CSRC = Path(__file__).resolve().parents[3] / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))
ARCHS = ("sm_80", "sm_90a")
OPS = ("linear", "rms_norm", "rope_", "sdpa_sinks", "mxfp4_dequantize", "moe_mxfp4")
GLUE_OPS = ("sdpa_sinks_varlen",)  # host code in torch_glue.cpp around the kernels above
NVCC = shutil.which("nvcc")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


# --------------------------------------------------------------------------------------------------
# Compilation (no GPU needed)
# --------------------------------------------------------------------------------------------------

def test_every_op_has_a_cuda_source():
    assert {p.stem for p in CU_FILES} >= {op.rstrip("_") for op in OPS}


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Compiles every (file, arch) once, in parallel: {(name, arch): (returncode, output, seconds)}."""
    out_dir = tmp_path_factory.mktemp("nvcc")

    def compile_one(job):
        path, arch = job
        cmd = [NVCC, "-std=c++17", "-c", f"-arch={arch}", "-I", str(CSRC), "-o",
               str(out_dir / f"{path.stem}-{arch}.o"), str(path)]
        start = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return (path.name, arch), (result.returncode, result.stdout + result.stderr, time.monotonic() - start)

    jobs = [(path, arch) for path in CU_FILES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return dict(pool.map(compile_one, jobs))


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", [p.name for p in CU_FILES])
def test_compiles_with_nvcc(nvcc_results, name, arch):
    returncode, output, seconds = nvcc_results[(name, arch)]
    assert returncode == 0, f"nvcc -arch={arch} {name} failed after {seconds:.1f}s:\n{output}"


# A CPU torch wheel ships the c10/ATen CUDA headers but not the file its CUDA build generates, and this
# toolkit has no cuBLAS/cuSPARSE/cuSOLVER headers: ATen only names their handle and status types.
_GLUE_STUBS = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#define C10_CUDA_BUILD_SHARED_LIBS\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
}


def _cuda_include_dirs() -> list[str]:
    """The toolkit's include directories, as nvcc itself reports them."""
    dry = subprocess.run([NVCC, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True, timeout=60)
    line = next(ln for ln in dry.stderr.splitlines() if "INCLUDES=" in ln)
    return [flag[2:] for flag in line.split('"')[1].split() if flag.startswith("-I")]


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_torch_glue_compiles_against_torch_headers(tmp_path):
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    for name, text in _GLUE_STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    includes = [*include_paths(), *_cuda_include_dirs(), sysconfig.get_paths()["include"], str(CSRC)]
    if not torch.cuda.is_available():  # a CUDA torch has the real headers; the stubs only fill gaps
        includes.append(str(tmp_path))
    cmd = ["g++", "-std=c++17", "-fsyntax-only", *(f"-I{d}" for d in includes), str(CSRC / "cuda" / "torch_glue.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


# --------------------------------------------------------------------------------------------------
# Correctness on a GPU: the op on CUDA tensors against the reference on CPU copies of the same inputs
# (float32 everywhere, no TF32), so the comparison does not depend on the GPU's own matmul settings.
# --------------------------------------------------------------------------------------------------

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def ops(extension):
    missing = [op for op in OPS + GLUE_OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gptoss::{op}", "CUDA")]
    assert not missing, (f"no CUDA kernel for {missing}: engine/ops/extension.py must build csrc/cuda/*.cu and "
                         "csrc/cuda/torch_glue.cpp when torch has CUDA")
    return extension


def on_cuda(*tensors):
    return [t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors]


def assert_close(got, want, rtol, atol):
    assert got.device.type == "cuda" and got.dtype == want.dtype and got.shape == want.shape
    got = got.cpu().float()
    err = (got - want.float()).abs()
    bound = atol + rtol * want.float().abs()
    assert (err <= bound).all(), f"max err {err.max().item():.3g}, worst err/bound {(err / bound).max().item():.3g}"


@needs_cuda
@pytest.mark.parametrize("shape", [(1, 1), (7, 97), (3, 5, 2880)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(ops, shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    scale = torch.randn(shape[-1], generator=g)
    got = ops.rms_norm(*on_cuda(x, scale), 1e-5)
    # float32 math in both; then the same bf16 rounding, ties possibly rounding apart (one bf16 ulp).
    assert_close(got, reference.rms_norm(x, scale, 1e-5), 1e-5 if dtype == torch.float32 else 2 ** -7, 1e-6)


def rope_case(lead, T, H, K, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, T, H, D, generator=g).to(dtype)
    k = torch.randn(*lead, T, K, D, generator=g).to(dtype)
    table = torch.randn(50, D, generator=g)
    positions = torch.randperm(50, generator=g)[:T]  # any order
    return q, k, table, positions


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead, T, H, K, D", [((2,), 5, 3, 1, 22), ((1,), 1, 8, 2, 64), ((), 7, 4, 4, 6)])
def test_rope(ops, lead, T, H, K, D, dtype):
    q, k, table, positions = rope_case(lead, T, H, K, D, dtype, seed=T * H + D)
    want_q, want_k = q.clone(), k.clone()
    reference.rope_(want_q, want_k, table, positions)
    q_gpu, k_gpu, table_gpu, pos_gpu = on_cuda(q, k, table, positions)
    ops.rope_(q_gpu, k_gpu, table_gpu, pos_gpu)
    # The same float32 products and sums, each rounded once: equal up to one ulp of the dtype.
    rtol = 2 ** -22 if dtype == torch.float32 else 2 ** -7
    assert_close(q_gpu, want_q, rtol, 1e-6)
    assert_close(k_gpu, want_k, rtol, 1e-6)


@needs_cuda
def test_rope_strided_views(ops):
    # k [B, T, K, D] as a transposed view of a [B, K, T, D] buffer (strided kernel path) and a 5-D q
    # whose leading dims cannot be flattened into one stride (rotated through a copy).
    B, T, H, K, D = 2, 5, 3, 2, 10
    q, k, table, positions = rope_case((3, B), T, H, K, D, torch.float32, seed=1)
    want_q, want_k = q.clone(), k.clone()
    reference.rope_(want_q, want_k, table, positions)
    q_gpu = q.transpose(0, 1).contiguous().to(CUDA).transpose(0, 1)
    k_gpu = k.transpose(-3, -2).contiguous().to(CUDA).transpose(-3, -2)
    assert not q_gpu.is_contiguous() and not k_gpu.is_contiguous()
    ops.rope_(q_gpu, k_gpu, *on_cuda(table, positions))
    assert_close(q_gpu, want_q, 2 ** -22, 1e-6)
    assert_close(k_gpu, want_k, 2 ** -22, 1e-6)


def sdpa_case(B, T, H, K, S, D, empty, seed, kv_dtype=torch.float32, q_dtype=torch.float32):
    """Keys at shuffled positions ending just after the queries' (so causality masks some), `empty` -1 slots."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to(q_dtype)
    k = torch.randn(B, K, S, D, generator=g).to(kv_dtype)
    v = torch.randn(B, K, S, D, generator=g).to(kv_dtype)
    sinks = torch.randn(H, generator=g) * 3
    now = S + T
    k_pos = torch.randperm(S, generator=g) + (now - S)
    k_pos[torch.randperm(S, generator=g)[:empty]] = -1
    q_pos = torch.arange(now - T, now)[torch.randperm(T, generator=g)]
    return q, k, v, sinks, q_pos, k_pos


@needs_cuda
@pytest.mark.parametrize("window", [0, 5, 40])
@pytest.mark.parametrize("B, T, H, K, S, D", [
    (2, 1, 6, 2, 45, 24),    # decode, one slice
    (1, 3, 8, 1, 700, 16),   # decode, keys split over several blocks and merged
    (1, 2, 20, 2, 300, 20),  # decode, G = 10 query heads per kv head (more than one block's 8)
    (2, 37, 6, 2, 45, 24),   # prefill, partial row tile
    (1, 70, 4, 1, 300, 64),  # prefill, many key tiles, most skipped under the window
])
def test_sdpa_sinks(ops, B, T, H, K, S, D, window):
    q, k, v, sinks, q_pos, k_pos = sdpa_case(B, T, H, K, S, D, empty=3, seed=B * T + S + window)
    sm_scale = 1 / math.sqrt(D)
    got = ops.sdpa_sinks(*on_cuda(q, k, v, sinks), sm_scale, window, *on_cuda(q_pos, k_pos))
    # float32 dot products of D terms, softmax and weighted sums in another order: |out| ≲ 4.
    assert_close(got, reference.sdpa_sinks(q, k, v, sinks, sm_scale, window, q_pos, k_pos), 1e-4, 2e-5)


@needs_cuda
@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("q_dtype, kv_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)])
def test_sdpa_sinks_bf16_and_strided_cache(ops, T, q_dtype, kv_dtype):
    # The full-attention cache hands over k[:, :, :S] of a longer buffer: strided, not contiguous.
    q, k, v, sinks, q_pos, k_pos = sdpa_case(2, T, 4, 2, 30, 8, empty=2, seed=T, kv_dtype=kv_dtype, q_dtype=q_dtype)
    k_buf = torch.zeros(2, 2, 41, 8, dtype=kv_dtype, device=CUDA)
    v_buf = torch.zeros_like(k_buf)
    k_buf[:, :, :30], v_buf[:, :, :30] = k.to(CUDA), v.to(CUDA)
    k_gpu, v_gpu = k_buf[:, :, :30], v_buf[:, :, :30]
    assert not k_gpu.is_contiguous()
    got = ops.sdpa_sinks(*on_cuda(q), k_gpu, v_gpu, *on_cuda(sinks), 0.3, 7, *on_cuda(q_pos, k_pos))
    # Both widen the same bf16 inputs exactly and compute in float32.
    assert_close(got, reference.sdpa_sinks(q, k, v, sinks, 0.3, 7, q_pos, k_pos), 1e-4, 2e-5)


@needs_cuda
@pytest.mark.parametrize("T", [1, 9])
def test_sdpa_sinks_rows_without_keys_are_zero(ops, T):
    q, k, v, sinks, q_pos, _ = sdpa_case(1, T, 4, 2, 12, 8, empty=0, seed=3)
    for k_pos in (torch.full((12,), -1), torch.arange(12) + 1000):  # all empty; all in the future
        got = ops.sdpa_sinks(*on_cuda(q, k, v, sinks), 0.3, 0, *on_cuda(q_pos, k_pos))
        assert torch.equal(got.cpu(), torch.zeros(1, T, 4, 8))


@needs_cuda
@pytest.mark.parametrize("lengths", [[1, 1, 1], [1, 6, 0, 1]])
def test_sdpa_sinks_varlen(ops, lengths):
    # Each sequence its own strided cache slice (k[:, :, :S] of a longer buffer) and window.
    seqs = [sdpa_case(1, T, 4, 2, 9 + 5 * i, 8, empty=2, seed=7 + i) for i, T in enumerate(lengths)]
    sinks = seqs[0][3]
    q = torch.cat([s[0][0] for s in seqs])
    q_pos = torch.cat([s[4] for s in seqs])
    ks = [torch.cat((s[1][0], torch.zeros(2, 4, 8)), dim=1).to(CUDA)[:, :s[1].shape[2]] for s in seqs]
    vs = [torch.cat((s[2][0], torch.zeros(2, 4, 8)), dim=1).to(CUDA)[:, :s[2].shape[2]] for s in seqs]
    got = ops.sdpa_sinks_varlen(*on_cuda(q), ks, vs, *on_cuda(sinks), 0.3, 6, *on_cuda(q_pos),
                                on_cuda(*[s[5] for s in seqs]), lengths)
    want = reference.sdpa_sinks_varlen(q, [s[1][0] for s in seqs], [s[2][0] for s in seqs], sinks, 0.3, 6, q_pos,
                                       [s[5] for s in seqs], lengths)
    assert_close(got, want, 1e-4, 2e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (1, 1)])
def test_mxfp4_dequantize_is_exact(ops, shape, dtype):
    g = torch.Generator().manual_seed(len(shape))
    blocks = torch.randint(0, 256, (*shape, 16), generator=g).to(torch.uint8)
    scales = torch.randint(0, 256, shape, generator=g).to(torch.uint8)
    scales.view(-1)[:4] = torch.tensor([0, 1, 254, 255], dtype=torch.uint8)[:scales.numel()]  # extremes
    got = ops.mxfp4_dequantize(*on_cuda(blocks, scales), dtype).cpu()
    want = reference.mxfp4_dequantize(blocks, scales, dtype)
    assert got.dtype == dtype and got.shape == want.shape
    # Bit for bit (0·2^128 is NaN in both).
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("E, A, N, D, I", [
    (5, 2, 7, 96, 64),     # D = 96: a partial 64-row weight tile
    (4, 4, 37, 64, 96),    # experts with more than one 16-pair tile
    (8, 2, 1, 32, 32),     # decode: most experts unused
    (3, 1, 1100, 32, 32),  # more tokens than one workspace chunk (1024)
])
def test_moe_mxfp4(ops, E, A, N, D, I, dtype):
    from tests.engine.ops.test_moe import make_case

    args, _ = make_case(E, A, N, D, I, seed=E * N + D, dtype=dtype)
    got = ops.moe_mxfp4(*on_cuda(*args))
    want = reference.moe_mxfp4(*args)
    # float32: only the summation order differs. bfloat16: the reference also rounds W1·x and W2·act
    # to bf16 (its CPU matmul output dtype), the kernel only the activation, so relative to the
    # output's scale (the swiglu clamp at 7 and D, I ~ 100 keep it at hundreds).
    tol = (1e-5 if dtype == torch.float32 else 2e-2) * want.abs().max().item()
    assert_close(got, want, 0.0, tol)


@needs_cuda
@pytest.mark.parametrize("rows", [1, 8, 9, 70])
@pytest.mark.parametrize("n_in, n_out", [(32, 33), (160, 130), (2880, 7)])
def test_linear_q8(ops, rows, n_in, n_out):
    # a warp per output row; rows beyond 8 are taken in groups of 8
    g = torch.Generator().manual_seed(rows * n_in + n_out)
    q, d = quantize_q8_0(torch.randn(n_out, n_in, generator=g))
    x = torch.randn(rows, n_in, generator=g)
    b = torch.randn(n_out, generator=g) if rows % 2 else None
    got = ops.linear_q8(*on_cuda(x, q, d, b))
    w = dequantize_q8_0(q, d).double()
    want = x.double() @ w.T + (b.double() if b is not None else 0)
    mag = x.double().abs() @ w.abs().T + (b.double().abs() if b is not None else 0)
    assert ((got.cpu().double() - want).abs() <= (n_in + 2) * U32 * mag + 1e-30).all()


@needs_cuda
@pytest.mark.parametrize("rows", [1, 8, 9, 70])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_in, n_out", [(45, 33), (160, 130), (1, 1)])
def test_linear(ops, rows, w_dtype, n_in, n_out):
    # rows <= 8: the matvec kernel; more: the tiled kernel (partial 64×64 tiles here).
    g = torch.Generator().manual_seed(rows * n_in + n_out)
    x = torch.randn(rows, n_in, generator=g)
    w = torch.randn(n_out, n_in, generator=g).to(w_dtype)
    b = torch.randn(n_out, generator=g) if rows % 2 else None
    got = ops.linear(*on_cuda(x, w, b))
    want = reference.linear(x, w, b)
    # Any summation order: (n_in + 1)·u·Σ|x||w| (+ |b|); the reference's bf16 matmul also rounds its
    # product to bf16 (2^-9 relative) before the bias add; the final bias add rounds once more.
    prod = x.to(w_dtype).double() @ w.double().T
    mag = x.to(w_dtype).double().abs() @ w.double().abs().T + (b.double().abs() if b is not None else 0)
    rounding = 2 ** -8 * prod.abs() if w_dtype == torch.bfloat16 else 0
    bound = (n_in + 2) * U32 * mag + rounding + 2 * U32 * want.double().abs() + 1e-30
    err = (got.cpu().double() - want.double()).abs()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (err <= bound).all(), f"max err/bound {(err / bound).max().item():.3g}"


@needs_cuda
def test_opcheck(ops):
    from tests.engine.ops.test_moe import make_case

    g = torch.Generator().manual_seed(0)
    opcheck = torch.library.opcheck
    x = torch.randn(3, 33, generator=g)
    opcheck(torch.ops.gptoss.rms_norm.default, tuple(on_cuda(x, torch.randn(33, generator=g), 1e-5)))
    opcheck(torch.ops.gptoss.linear.default,
            tuple(on_cuda(x, torch.randn(5, 33, generator=g), torch.randn(5, generator=g))))
    q, k, table, positions = rope_case((2,), 5, 3, 1, 22, torch.float32, seed=0)
    opcheck(torch.ops.gptoss.rope_.default, tuple(on_cuda(q, k, table, positions)))
    q, k, v, sinks, q_pos, k_pos = sdpa_case(1, 3, 4, 2, 20, 8, empty=2, seed=0)
    for T in (1, 3):  # decode and prefill kernels
        opcheck(torch.ops.gptoss.sdpa_sinks.default,
                (*on_cuda(q[:, :T], k, v, sinks), 0.3, 5, *on_cuda(q_pos[:T], k_pos)))
    blocks = torch.randint(0, 256, (2, 3, 16), generator=g).to(torch.uint8)
    scales = torch.randint(100, 150, (2, 3), generator=g).to(torch.uint8)
    opcheck(torch.ops.gptoss.mxfp4_dequantize.default, (*on_cuda(blocks, scales), torch.bfloat16))
    args, _ = make_case(4, 2, 5, 32, 32, seed=0)
    opcheck(torch.ops.gptoss.moe_mxfp4.default, tuple(on_cuda(*args)))


@needs_cuda
def test_bad_input_names_the_tensor(ops):
    with pytest.raises(RuntimeError, match="scale has 3 entries but x rows have 4"):
        ops.rms_norm(*on_cuda(torch.randn(2, 4), torch.randn(3)), 1e-5)
    with pytest.raises(RuntimeError, match="q and q_pos must be on the same device"):
        ops.sdpa_sinks(*on_cuda(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8),
                                torch.zeros(2)), 0.3, 0, torch.tensor([3]), torch.arange(4, device=CUDA))
