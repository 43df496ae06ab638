// Device helpers shared by the CUDA kernels (nvcc only, no torch): float32/bfloat16 loads and
// stores, warp reductions, and a device-side check that stops the kernel on bad indices.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "kernel_args.h"

namespace gptoss {
namespace device {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Every kernel computes in float32; bfloat16 is widened on load and rounded to nearest even on store.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Butterfly reductions: every lane of the warp ends with the result. All 32 lanes must take part.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Like the device-side asserts of torch's own CUDA kernels, but kept in release builds: a bad index
// (a position past the rope table, an expert id outside [0, E)) must not turn into a wild read.
#define GPTOSS_DEVICE_CHECK(cond, what)                                                      \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      printf("gptoss CUDA kernel: %s (block %d, thread %d)\n", what, (int)blockIdx.x,      \
             (int)threadIdx.x);                                                            \
      __trap();                                                                            \
    }                                                                                      \
  } while (0)

}  // namespace device

// Host side: number of blocks of `per` covering `n`.
inline int64_t ceil_div(int64_t n, int64_t per) { return (n + per - 1) / per; }

}  // namespace gptoss
