// RMSNorm on CUDA: out = x / sqrt(mean(x²) + eps) · scale over contiguous rows, float32 math, the
// result in x's dtype (float32 or bfloat16).
//
// Launch: one block per row (grid-stride over rows beyond the grid), threads striding over the row
// so that a warp reads 32 consecutive elements (coalesced). The sum of squares is reduced per warp
// with shuffles, then across the block's warps through shared memory; the row is read a second
// time for the output (it is still in L1/L2 for rows of a few thousand elements).
#include <algorithm>

#include "common.cuh"

namespace gptoss {
namespace {

constexpr int kMaxThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
rms_norm_kernel(const T* __restrict__ x, const float* __restrict__ scale, T* __restrict__ out, int64_t rows,
                int64_t dim, float eps) {
  __shared__ float warp_sums[kMaxThreads / device::kWarp];
  __shared__ float inv_rms;
  const int lane = threadIdx.x % device::kWarp, warp = threadIdx.x / device::kWarp;
  const int warps = blockDim.x / device::kWarp;  // blockDim.x is a multiple of 32
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * dim;
    T* yr = out + row * dim;
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = device::to_float(xr[i]);
      sum += v * v;
    }
    sum = device::warp_sum(sum);
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    if (warp == 0) {
      float total = lane < warps ? warp_sums[lane] : 0.0f;
      total = device::warp_sum(total);
      if (lane == 0) inv_rms = 1.0f / sqrtf(total / static_cast<float>(dim) + eps);
    }
    __syncthreads();
    const float inv = inv_rms;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
      yr[i] = device::from_float<T>(device::to_float(xr[i]) * inv * scale[i]);
    __syncthreads();  // warp_sums and inv_rms are rewritten for the next row
  }
}

template <typename T>
void launch(const RmsNormArgs& a, cudaStream_t stream) {
  // Enough threads to cover the row once, rounded up to whole warps, at most kMaxThreads.
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, ceil_div(a.dim, device::kWarp) * device::kWarp));
  const int blocks = static_cast<int>(std::min<int64_t>(a.rows, 1 << 20));
  rms_norm_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(a.x), a.scale, static_cast<T*>(a.out),
                                                     a.rows, a.dim, a.eps);
}

}  // namespace

cudaError_t launch_rms_norm(const RmsNormArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.dim == 0) return cudaSuccess;
  if (args.dtype == DType::kFloat32)
    launch<float>(args, stream);
  else
    launch<__nv_bfloat16>(args, stream);
  return cudaGetLastError();
}

}  // namespace gptoss
