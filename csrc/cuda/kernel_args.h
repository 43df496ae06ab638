// Parameters of the CUDA kernels: one plain struct per op plus its launcher, shared by the kernels
// (csrc/cuda/<op>.cu, compiled by nvcc without torch headers) and the torch glue (torch_glue.cpp).
//
// Conventions for every struct:
//   - pointers are device pointers; `const void*` + DType where the op accepts float32 or bfloat16;
//   - sizes and strides are in elements (not bytes) and int64_t; the last dim is always contiguous;
//   - launchers only enqueue work on `stream` and return cudaGetLastError(): the glue checks shapes,
//     dtypes and devices before, and turns a non-success return into an error after.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace gptoss {

// Element type of a float tensor handed to a kernel.
enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1 };

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · scale, rows contiguous, out in x's dtype.
struct RmsNormArgs {
  const void* x;
  const float* scale;  // [dim]
  void* out;           // [rows, dim]
  DType dtype;         // of x and out
  int64_t rows, dim;
  float eps;
};

// Rotates one tensor x [batch, tokens, heads, head_dim] in place (half-split pairing, i with
// i + head_dim/2) by the rows cos_sin[positions[t]]: c·cos in the first half, c·sin in the second.
struct RopeArgs {
  void* x;
  DType dtype;
  int64_t batch, tokens, heads, head_dim;
  int64_t stride_batch, stride_token, stride_head;  // of x; stride 1 along head_dim
  const float* cos_sin;                             // [table_rows, head_dim], contiguous
  int64_t table_rows;
  const int64_t* positions;                         // [tokens]
};

// Attention with sinks for q [B, T, H, Dh] against k, v [B, K, S, Dh] (query head h reads kv head
// h / (H / K)); out [B, T, H, Dh] float32, contiguous. A key s is visible to query t iff
// 0 <= k_pos[s] <= q_pos[t] and (window <= 0 or q_pos[t] - k_pos[s] < window).
struct SdpaSinksArgs {
  const void* q;
  const void* k;
  const void* v;
  DType q_dtype, kv_dtype;  // k and v share one dtype
  const float* sinks;       // [H], logits in score units
  const int64_t* q_pos;     // [T]
  const int64_t* k_pos;     // [S], -1 = empty slot
  float* out;
  int64_t batch, tokens, heads, kv_heads, keys, head_dim;
  int64_t q_stride_batch, q_stride_token, q_stride_head;
  int64_t k_stride_batch, k_stride_head, k_stride_key;
  int64_t v_stride_batch, v_stride_head, v_stride_key;
  float sm_scale;
  int64_t sliding_window;  // <= 0: none
  // Decode only (tokens <= kSdpaDecodeMaxTokens): keys are split into num_splits slices processed
  // by separate blocks; with more than one slice, `workspace` holds their partial results
  // (sdpa_sinks_workspace_floats of them). Set both with sdpa_sinks_plan.
  int32_t num_splits;
  float* workspace;
};
constexpr int64_t kSdpaDecodeMaxTokens = 4;

// Mixture of MXFP4 experts: out[n] = Σ_a w[n, a]·(W2[e]·swiglu(W1[e]·x[n] + b1[e]) + b2[e]) with
// e = expert_ids[n, a]; x [N, D] float32 or bfloat16 (the compute dtype), out [N, D] float32.
struct MoeMxfp4Args {
  const void* x;
  DType dtype;                   // of x; also of the activation fed to W2 (as the reference rounds it)
  const int32_t* expert_ids;     // [N, A]
  const float* expert_weights;   // [N, A]
  const uint8_t* w1_blocks;      // [E, 2I, D/32, 16]
  const uint8_t* w1_scales;      // [E, 2I, D/32]
  const float* b1;               // [E, 2I], gate/up interleaved rows
  const uint8_t* w2_blocks;      // [E, D, I/32, 16]
  const uint8_t* w2_scales;      // [E, D, I/32]
  const float* b2;               // [E, D]
  float* out;                    // [N, D]
  int64_t tokens, experts_per_token, experts, hidden, intermediate;  // N, A, E, D, I
  float swiglu_alpha, swiglu_limit;
  void* workspace;               // moe_mxfp4_workspace_bytes(args) bytes, 16-byte aligned
};

// MXFP4 blocks [n_blocks, 16] + E8M0 scales [n_blocks] -> out [n_blocks·32] in dtype.
struct Mxfp4DequantizeArgs {
  const uint8_t* blocks;
  const uint8_t* scales;
  void* out;
  DType dtype;
  int64_t n_blocks;
};

// out[m, n] = Σ_k x[m, k]·w[n, k] + bias[n] in float32; x already in w's dtype; all contiguous.
struct LinearArgs {
  const void* x;       // [rows, in]
  const void* weight;  // [out, in]
  DType dtype;         // of x and weight
  const float* bias;   // [out] or nullptr
  float* out;          // [rows, out]
  int64_t rows, in_features, out_features;
};
constexpr int64_t kLinearMatvecMaxRows = 8;  // up to this many rows: one warp streams each weight row

// out[m, n] = Σ_k x[m, k]·q[n, k]·scales[n, k/32] + bias[n] in float32; x float32; all contiguous.
struct LinearQ8Args {
  const float* x;         // [rows, in]
  const int8_t* qweight;  // [out, in], in a multiple of 32
  const void* scales;     // [out, in/32] float16 (__half)
  const float* bias;      // [out] or nullptr
  float* out;             // [rows, out]
  int64_t rows, in_features, out_features;
};

cudaError_t launch_rms_norm(const RmsNormArgs& args, cudaStream_t stream);
cudaError_t launch_rope(const RopeArgs& args, cudaStream_t stream);

// Chooses num_splits for a device with `sm_count` multiprocessors (1 outside decode).
void sdpa_sinks_plan(SdpaSinksArgs& args, int sm_count);
size_t sdpa_sinks_workspace_floats(const SdpaSinksArgs& args);
cudaError_t launch_sdpa_sinks(const SdpaSinksArgs& args, cudaStream_t stream);

size_t moe_mxfp4_workspace_bytes(const MoeMxfp4Args& args);
cudaError_t launch_moe_mxfp4(const MoeMxfp4Args& args, cudaStream_t stream);

cudaError_t launch_mxfp4_dequantize(const Mxfp4DequantizeArgs& args, cudaStream_t stream);
cudaError_t launch_linear(const LinearArgs& args, cudaStream_t stream);
cudaError_t launch_linear_q8(const LinearQ8Args& args, cudaStream_t stream);

}  // namespace gptoss
