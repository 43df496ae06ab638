// RoPE on CUDA, in place: x [batch, tokens, heads, head_dim] (any strides, last dim contiguous)
// rotated pairwise, element i with element i + head_dim/2 (half-split / NeoX pairing), by the
// table row of the token's absolute position: cos_sin[p, i] = c·cos(p·ω_i) and
// cos_sin[p, half + i] = c·sin(p·ω_i).
//
// Launch: one thread per (row, pair), rows = batch·tokens·heads, flattened with the pair index
// fastest, so a warp covers consecutive pairs of one row (coalesced loads of both halves). The
// thread owns its two elements: no synchronisation. The products and sums are rounded one by one
// (__fmul_rn / __fadd_rn, no FMA contraction), like the separate elementwise ops of the reference.
#include <algorithm>

#include "common.cuh"

namespace gptoss {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeArgs a) {
  T* x = static_cast<T*>(a.x);
  const int64_t half = a.head_dim / 2;
  const int64_t total = a.batch * a.tokens * a.heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;  // pair index
    int64_t row = idx / half;
    const int64_t h = row % a.heads;
    row /= a.heads;
    const int64_t t = row % a.tokens;
    const int64_t b = row / a.tokens;
    const int64_t p = a.positions[t];
    GPTOSS_DEVICE_CHECK(p >= 0 && p < a.table_rows, "rope_: position outside the cos_sin table");
    const float c = a.cos_sin[p * a.head_dim + i];
    const float s = a.cos_sin[p * a.head_dim + half + i];
    T* xr = x + b * a.stride_batch + t * a.stride_token + h * a.stride_head;
    const float lo = device::to_float(xr[i]), hi = device::to_float(xr[i + half]);
    xr[i] = device::from_float<T>(__fsub_rn(__fmul_rn(lo, c), __fmul_rn(hi, s)));
    xr[i + half] = device::from_float<T>(__fadd_rn(__fmul_rn(hi, c), __fmul_rn(lo, s)));
  }
}

}  // namespace

cudaError_t launch_rope(const RopeArgs& args, cudaStream_t stream) {
  const int64_t total = args.batch * args.tokens * args.heads * (args.head_dim / 2);
  if (total == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(total, kThreads), 1 << 20));
  if (args.dtype == DType::kFloat32)
    rope_kernel<float><<<blocks, kThreads, 0, stream>>>(args);
  else
    rope_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace gptoss
