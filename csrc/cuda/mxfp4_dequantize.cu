// MXFP4 dequantisation on CUDA: blocks [n_blocks, 16] uint8 + E8M0 scales [n_blocks] -> values
// [n_blocks·32] in float32 or bfloat16.
//
// Layout (csrc/mxfp4.h): byte j of block b holds element 32b + 2j in its low nibble and 32b + 2j + 1
// in its high nibble; all 32 share the multiplier 2^(scales[b] - 127). The product of an FP4 value
// and a power of two is exact in float32 and in bfloat16, so every output equals the reference's.
//
// Launch: one thread per packed byte (16 per block), a grid-stride loop over all bytes; a warp
// reads 32 consecutive bytes (two MXFP4 blocks, whose two scales it shares) and writes 64
// consecutive outputs, two per thread.
#include <algorithm>

#include "../mxfp4.h"
#include "common.cuh"

namespace gptoss {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
dequantize_kernel(const uint8_t* __restrict__ blocks, const uint8_t* __restrict__ scales, T* __restrict__ out,
                  int64_t n_bytes) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n_bytes;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint8_t byte = blocks[idx];
    const float m = e8m0_multiplier(scales[idx / kMxfp4BlockBytes]);
    // Byte idx = 16b + j holds elements 32b + 2j and 32b + 2j + 1, i.e. 2·idx and 2·idx + 1.
    out[2 * idx] = device::from_float<T>(fp4_value(byte & 0x0F) * m);
    out[2 * idx + 1] = device::from_float<T>(fp4_value(byte >> 4) * m);
  }
}

}  // namespace

cudaError_t launch_mxfp4_dequantize(const Mxfp4DequantizeArgs& args, cudaStream_t stream) {
  const int64_t n_bytes = args.n_blocks * kMxfp4BlockBytes;
  if (n_bytes == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n_bytes, kThreads), 1 << 20));
  if (args.dtype == DType::kFloat32)
    dequantize_kernel<float><<<blocks, kThreads, 0, stream>>>(args.blocks, args.scales,
                                                              static_cast<float*>(args.out), n_bytes);
  else
    dequantize_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(args.blocks, args.scales,
                                                                      static_cast<__nv_bfloat16*>(args.out), n_bytes);
  return cudaGetLastError();
}

}  // namespace gptoss
