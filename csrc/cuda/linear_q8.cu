// Linear layer with 8-bit weights on CUDA: out[m, n] = Σ_k x[m, k]·W[n, k] + bias[n], float32, W in
// Q8_0's layout: int8 qweight [out, in] and one float16 scale per block of 32 (W[n, k] =
// q[n, k]·d[n, k/32]); x is float32 (the glue converts it).
//
// One kernel: a warp per output feature streams its int8 row, 4 values per lane per step (128
// coalesced bytes per warp), each lane scaling its 4 values by their block's scale, with one
// accumulator per x row for up to kLinearMatvecMaxRows rows at a time; more rows are taken in groups
// of that many, re-reading the row (from L2 for a small matrix). Prompts on a GPU would want a tiled
// kernel; this one is compile-checked in CI and has not run on GPU hardware yet.
#include <cuda_fp16.h>

#include "common.cuh"

namespace gptoss {
namespace {

constexpr int kMaxRows = static_cast<int>(kLinearMatvecMaxRows);
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * device::kWarp;

__global__ void __launch_bounds__(kThreads)
linear_q8_kernel(const float* __restrict__ x, const int8_t* __restrict__ q, const __half* __restrict__ d,
                 const float* __restrict__ bias, float* __restrict__ out, int64_t rows, int64_t in,
                 int64_t out_features) {
  const int lane = threadIdx.x % device::kWarp;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / device::kWarp;
  if (n >= out_features) return;  // whole warps leave together: the shuffles below stay full-warp
  const int8_t* qr = q + n * in;
  const __half* dr = d + n * (in / 32);
  const float b = bias ? bias[n] : 0.0f;
  for (int64_t m0 = 0; m0 < rows; m0 += kMaxRows) {
    float acc[kMaxRows];
#pragma unroll
    for (int m = 0; m < kMaxRows; ++m) acc[m] = 0.0f;
    for (int64_t k = 4 * lane; k < in; k += 4 * device::kWarp) {
      const char4 v = *reinterpret_cast<const char4*>(qr + k);  // in is a multiple of 32: aligned
      const float s = __half2float(dr[k / 32]);
      const float w0 = v.x * s, w1 = v.y * s, w2 = v.z * s, w3 = v.w * s;
#pragma unroll
      for (int m = 0; m < kMaxRows; ++m) {
        if (m0 + m >= rows) break;
        const float* xr = x + (m0 + m) * in + k;
        acc[m] += xr[0] * w0 + xr[1] * w1 + xr[2] * w2 + xr[3] * w3;
      }
    }
#pragma unroll
    for (int m = 0; m < kMaxRows; ++m) {
      if (m0 + m >= rows) break;  // uniform across the warp
      const float sum = device::warp_sum(acc[m]);
      if (lane == 0) out[(m0 + m) * out_features + n] = sum + b;
    }
  }
}

}  // namespace

cudaError_t launch_linear_q8(const LinearQ8Args& a, cudaStream_t stream) {
  if (a.rows == 0 || a.out_features == 0) return cudaSuccess;
  const int64_t blocks = ceil_div(a.out_features, kWarps);
  linear_q8_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      a.x, a.qweight, static_cast<const __half*>(a.scales), a.bias, a.out, a.rows, a.in_features, a.out_features);
  return cudaGetLastError();
}

}  // namespace gptoss
