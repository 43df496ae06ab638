// Linear layer on CUDA: out[m, n] = Σ_k x[m, k]·W[n, k] + bias[n], float32 out. x is already in W's
// dtype (float32 or bfloat16; the glue casts it, as the reference does); products and sums are in
// float32, and nothing is rounded to bfloat16 on the way out.
//
// Layout: x [rows, in], W [out, in] (PyTorch's nn.Linear layout: each output feature is one
// contiguous weight row), out [rows, out]; all contiguous.
//
// Two kernels:
//   - matvec (rows <= kLinearMatvecMaxRows, i.e. decoding): bound by reading W once. One warp per
//     output feature streams its weight row with 32 consecutive elements per step (coalesced) and
//     keeps one accumulator per x row; 8 warps (8 features) per block.
//   - tiled (more rows): a 64×64 output tile per block of 256 threads; each step stages a 64×32
//     slice of x and of W in shared memory as float32, and each thread accumulates a 4×4 sub-tile.
#include <algorithm>

#include "common.cuh"

namespace gptoss {
namespace {

constexpr int kMaxRows = static_cast<int>(kLinearMatvecMaxRows);
constexpr int kMatvecWarps = 8;
constexpr int kMatvecThreads = kMatvecWarps * device::kWarp;

template <typename T>
__global__ void __launch_bounds__(kMatvecThreads)
linear_matvec_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                     float* __restrict__ out, int rows, int64_t in, int64_t out_features) {
  const int lane = threadIdx.x % device::kWarp;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kMatvecWarps + threadIdx.x / device::kWarp;
  if (n >= out_features) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* wr = w + n * in;
  float acc[kMaxRows];
#pragma unroll
  for (int m = 0; m < kMaxRows; ++m) acc[m] = 0.0f;
  for (int64_t k = lane; k < in; k += device::kWarp) {
    const float wk = device::to_float(wr[k]);
#pragma unroll
    for (int m = 0; m < kMaxRows; ++m)
      if (m < rows) acc[m] += device::to_float(x[m * in + k]) * wk;  // x rows stay in L1/L2
  }
  const float b = bias ? bias[n] : 0.0f;
#pragma unroll
  for (int m = 0; m < kMaxRows; ++m) {
    if (m >= rows) break;  // uniform across the warp
    const float sum = device::warp_sum(acc[m]);
    if (lane == 0) out[m * out_features + n] = sum + b;
  }
}

constexpr int kTile = 64;          // output rows and columns per block
constexpr int kTileK = 32;         // reduction slice staged per step
constexpr int kTiledThreads = 256; // 16×16 threads, 4×4 outputs each
constexpr int kSub = 4;

template <typename T>
__global__ void __launch_bounds__(kTiledThreads)
linear_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ out, int64_t rows, int64_t in, int64_t out_features) {
  // Row pitch kTileK + 1: the 16 threads of a half-warp read 16 different rows of w_s at the same k,
  // which then fall into 16 different banks.
  __shared__ float x_s[kTile][kTileK + 1];
  __shared__ float w_s[kTile][kTileK + 1];
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // Thread (ty, tx) owns rows m0 + ty + 16i and columns n0 + tx + 16j (i, j < 4): strided, so that
  // consecutive threads write consecutive output columns.
  float acc[kSub][kSub] = {};
  for (int64_t k0 = 0; k0 < in; k0 += kTileK) {
    // Stage both slices: element e of the 64×32 slice is row e / 32, column e % 32, so a warp reads
    // 32 consecutive k of one row. Out-of-range elements are zeros.
    for (int e = threadIdx.x; e < kTile * kTileK; e += kTiledThreads) {
      const int r = e / kTileK, c = e % kTileK;
      const int64_t k = k0 + c;
      x_s[r][c] = (m0 + r < rows && k < in) ? device::to_float(x[(m0 + r) * in + k]) : 0.0f;
      w_s[r][c] = (n0 + r < out_features && k < in) ? device::to_float(w[(n0 + r) * in + k]) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTileK; ++c) {
      float xv[kSub], wv[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) xv[i] = x_s[ty + 16 * i][c];
#pragma unroll
      for (int j = 0; j < kSub; ++j) wv[j] = w_s[tx + 16 * j][c];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += xv[i] * wv[j];
    }
    __syncthreads();  // the slices are overwritten in the next step
  }
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= rows) continue;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < out_features) out[m * out_features + n] = acc[i][j] + (bias ? bias[n] : 0.0f);
    }
  }
}

template <typename T>
void launch(const LinearArgs& a, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.weight);
  if (a.rows <= kLinearMatvecMaxRows) {
    const int64_t blocks = ceil_div(a.out_features, kMatvecWarps);
    linear_matvec_kernel<T><<<static_cast<unsigned>(blocks), kMatvecThreads, 0, stream>>>(
        x, w, a.bias, a.out, static_cast<int>(a.rows), a.in_features, a.out_features);
  } else {
    // x: columns of tiles over the output features, y: rows of tiles over the x rows (grid.y is
    // limited to 65535 tiles, 4M rows).
    const dim3 grid(static_cast<unsigned>(ceil_div(a.out_features, kTile)), static_cast<unsigned>(ceil_div(a.rows, kTile)));
    linear_tiled_kernel<T><<<grid, kTiledThreads, 0, stream>>>(x, w, a.bias, a.out, a.rows, a.in_features,
                                                               a.out_features);
  }
}

}  // namespace

cudaError_t launch_linear(const LinearArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.out_features == 0) return cudaSuccess;
  if (ceil_div(args.rows, kTile) > 65535) return cudaErrorInvalidConfiguration;
  if (args.dtype == DType::kFloat32)
    launch<float>(args, stream);
  else
    launch<__nv_bfloat16>(args, stream);
  return cudaGetLastError();
}

}  // namespace gptoss
