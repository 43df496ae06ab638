// Every op schema of the gptoss library, one comment line each. Implementations register themselves
// at the bottom of their own files (cpu/<op>.cpp, cuda/<op>.cu), so a build without CUDA needs no
// #ifdefs here. Semantics are defined by the pure-PyTorch twins in engine/ops/reference.py.
#include <torch/library.h>

TORCH_LIBRARY(gptoss, m) {
  // y = x·Wᵀ + b in float32 (x cast to W's dtype, bfloat16 or float32); x [..., in], W [out, in], b [out]
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // y = x·Wᵀ + b in float32, W in Q8_0's layout: int8 qweight [out, in], float16 scales [out, in/32]
  // (W[j, k] = qweight[j, k]·scales[j, k/32]); x used in float32
  m.def("linear_q8(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor");
  // weight [out, in] -> (int8 qweight [out, in], float16 scales [out, in/32]) by Q8_0's rule (engine/int8.py)
  m.def("quantize_q8_0(Tensor weight) -> (Tensor, Tensor)");
  // x / sqrt(mean(x²) + eps) · scale over the last axis, float32 math, result in x's dtype
  m.def("rms_norm(Tensor x, Tensor scale, float eps) -> Tensor");
  // rotates q [.., T, H, D] and k [.., T, K, D] in place (half-split) with rows cos_sin[positions]
  m.def("rope_(Tensor(a!) q, Tensor(b!) k, Tensor cos_sin, Tensor positions) -> ()");
  // GQA attention with per-head sink logits and an optional sliding window; keys carry positions
  m.def("sdpa_sinks(Tensor q, Tensor k, Tensor v, Tensor sinks, float sm_scale, int sliding_window, "
        "Tensor q_pos, Tensor k_pos) -> Tensor");
  // sdpa_sinks for several sequences at once: q [T, H, Dh] their tokens back to back (q_lengths),
  // sequence i against its own k[i], v[i] [K, S_i, Dh] with positions k_pos[i]; out [T, H, Dh] float32
  m.def("sdpa_sinks_varlen(Tensor q, Tensor[] k, Tensor[] v, Tensor sinks, float sm_scale, int sliding_window, "
        "Tensor q_pos, Tensor[] k_pos, int[] q_lengths) -> Tensor");
  // MXFP4 blocks [.., nb, 16] + E8M0 scales [.., nb] -> values [.., nb·32] in dtype
  m.def("mxfp4_dequantize(Tensor blocks, Tensor scales, ScalarType dtype) -> Tensor");
  // the CPU kernel family used for work in dtype: amx, avx512_bf16, avx2 or portable (not a numeric op)
  m.def("cpu_kernels(ScalarType dtype) -> str");
  // best GB/s of `repeats` reads of buffer, each thread's share as 4 concurrent streams (not numeric)
  m.def("read_bandwidth(Tensor buffer, int repeats) -> float");
  // Σ_a w[n,a]·(W2[e]·swiglu(W1[e]·x[n] + b1[e]) + b2[e]) with MXFP4 expert weights, float32 out
  m.def("moe_mxfp4(Tensor x, Tensor expert_ids, Tensor expert_weights, Tensor w1_blocks, Tensor w1_scales, "
        "Tensor b1, Tensor w2_blocks, Tensor w2_scales, Tensor b2, float swiglu_alpha, float swiglu_limit) -> Tensor");
  // moe_mxfp4 on a GGUF's experts as they are stored: ggml's MXFP4 blocks [E, rows, nb, 17] (scale byte,
  // then 16 bytes of nibbles), gate and up apart; b1 [E, 2I] with gate/up interleaved as in moe_mxfp4
  m.def("moe_mxfp4_ggml(Tensor x, Tensor expert_ids, Tensor expert_weights, Tensor gate, Tensor up, Tensor b1, "
        "Tensor down, Tensor b2, float swiglu_alpha, float swiglu_limit) -> Tensor");
}
