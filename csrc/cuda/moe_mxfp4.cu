// Mixture of MXFP4 experts on CUDA:
//   out[n] = Σ_a w[n, a]·(W2[e]·swiglu(W1[e]·x[n] + b1[e]) + b2[e]),  e = expert_ids[n, a],
// with the expert matrices read straight from their packed MXFP4 blocks and E8M0 scales; nothing is
// dequantised to memory. Products and sums are float32; the SwiGLU output is rounded to x's dtype
// before W2, as the reference does when it casts the activation to the expert's compute dtype.
//
// Layout: x [N, D]; expert_ids, expert_weights [N, A]; a (token, slot) pair p = n·A + a.
// W1 [E, 2I, D] as w1_blocks [E, 2I, D/32, 16] + w1_scales [E, 2I, D/32]: row 2i is the gate and
// row 2i + 1 the up projection of unit i (interleaved); W2 [E, D, I] likewise with I/32 blocks a row.
// Byte j of a block holds elements 2j (low nibble) and 2j + 1 (high nibble), see csrc/mxfp4.h.
//
// Steps (all on the stream, no host synchronisation), for chunks of up to kChunkTokens tokens:
//   1. route (one block): count the pairs of every expert, prefix-sum the counts, list the pairs
//      grouped by expert (sorted_pairs) and cut each expert's list into tiles of kTileRows pairs
//      (tile_expert, tile_begin, tile_end; num_tiles of them).
//   2. gemm stage 1: one block per (tile, kTileCols rows of W1): act[p] = swiglu(W1[e]·x[n] + b1[e]).
//   3. gemm stage 2: one block per (tile, kTileCols rows of W2): y[p] = w[p]·(W2[e]·act[p] + b2[e]).
//   4. reduce: out[n] = Σ_a y[n·A + a] in slot order, so the result does not depend on the order
//      in which step 1's atomics listed the pairs.
// The grids of steps 2 and 3 are sized for the worst case (every expert's last tile partial); the
// blocks past num_tiles return at once.
#include <algorithm>

#include "../mxfp4.h"
#include "common.cuh"

namespace gptoss {
namespace {

constexpr int64_t kChunkTokens = 1024;  // bounds the workspace (act and y of the chunk's pairs)
constexpr int kRouteThreads = 256;
constexpr int kTileRows = 16;     // pairs per gemm block
constexpr int kTileCols = 64;     // weight rows (output features) per gemm block
constexpr int kGemmThreads = 128; // 16 pair rows × 8 column groups of 8
constexpr int kColsPerThread = kTileCols / (kGemmThreads / kTileRows);
static_assert(kColsPerThread == 8 && kColsPerThread % 2 == 0, "a thread owns whole gate/up pairs");

// The workspace, carved into 256-byte aligned arrays.
struct Workspace {
  int32_t* sorted_pairs;  // [P] pair ids grouped by expert
  int32_t* tile_expert;   // [max_tiles]
  int32_t* tile_begin;    // [max_tiles] range of sorted_pairs
  int32_t* tile_end;      // [max_tiles]
  int32_t* num_tiles;     // [1]
  void* act;              // [P, I] in x's dtype
  float* y;               // [P, D] weighted expert outputs
  size_t bytes;           // total
};

int64_t max_tiles(int64_t pairs, int64_t experts) {
  // Σ_e ceil(c_e / kTileRows) <= ceil(P / kTileRows) + (number of experts with c_e > 0).
  return ceil_div(pairs, kTileRows) + std::min(pairs, experts);
}

Workspace carve(void* base, int64_t tokens, const MoeMxfp4Args& a) {
  const int64_t pairs = tokens * a.experts_per_token, tiles = max_tiles(pairs, a.experts);
  const size_t elt = a.dtype == DType::kFloat32 ? 4 : 2;
  Workspace w{};
  size_t offset = 0;
  auto take = [&](size_t bytes) {  // integer arithmetic: base is nullptr when only sizing
    void* p = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(base) + offset);
    offset += (bytes + 255) / 256 * 256;
    return p;
  };
  w.sorted_pairs = static_cast<int32_t*>(take(sizeof(int32_t) * pairs));
  w.tile_expert = static_cast<int32_t*>(take(sizeof(int32_t) * tiles));
  w.tile_begin = static_cast<int32_t*>(take(sizeof(int32_t) * tiles));
  w.tile_end = static_cast<int32_t*>(take(sizeof(int32_t) * tiles));
  w.num_tiles = static_cast<int32_t*>(take(sizeof(int32_t)));
  w.act = take(elt * pairs * a.intermediate);
  w.y = static_cast<float*>(take(sizeof(float) * pairs * a.hidden));
  w.bytes = offset;
  return w;
}

// ---------------------------------------------------------------------------------------------------
// 1. Routing: one block; shared memory holds the per-expert counters ([experts] ints each).
// ---------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kRouteThreads)
moe_route_kernel(const int32_t* __restrict__ expert_ids, int32_t pairs, int32_t experts, Workspace w) {
  extern __shared__ int32_t route_smem[];
  int32_t* count = route_smem;              // [E] pairs per expert, then the fill cursor
  int32_t* pair_offset = count + experts;   // [E + 1] exclusive prefix sum of the counts
  int32_t* tile_offset = pair_offset + experts + 1;  // [E + 1] same for the tiles
  for (int e = threadIdx.x; e < experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t e = expert_ids[p];
    GPTOSS_DEVICE_CHECK(e >= 0 && e < experts, "moe_mxfp4: expert id outside [0, E)");
    atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // E is small (32 or 128 in gpt-oss): a serial scan is simplest
    pair_offset[0] = tile_offset[0] = 0;
    for (int e = 0; e < experts; ++e) {
      pair_offset[e + 1] = pair_offset[e] + count[e];
      tile_offset[e + 1] = tile_offset[e] + (count[e] + kTileRows - 1) / kTileRows;
    }
    *w.num_tiles = tile_offset[experts];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    for (int t = tile_offset[e]; t < tile_offset[e + 1]; ++t) {
      w.tile_expert[t] = e;
      w.tile_begin[t] = pair_offset[e] + (t - tile_offset[e]) * kTileRows;
      w.tile_end[t] = min(w.tile_begin[t] + kTileRows, pair_offset[e + 1]);
    }
    count[e] = 0;  // reused as the fill cursor
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t e = expert_ids[p];
    w.sorted_pairs[pair_offset[e] + atomicAdd(&count[e], 1)] = p;
  }
}

// ---------------------------------------------------------------------------------------------------
// 2./3. Grouped MXFP4 matrix product, one expert per block.
//   in:  rows of length K; tile row i reads row (sorted pair p) / in_div (stage 1: the token of the
//        pair, x[n]; stage 2: the pair's own activation act[p]).
//   W:   [E, R, K] packed; the block computes rows n0 .. n0 + kTileCols of W[e].
// Each step over K stages one MXFP4 block column (32 inputs): the tile's 16 input rows and the 64
// weight rows' 32 values, decoded in registers by the thread that loads their bytes.
// ---------------------------------------------------------------------------------------------------
enum class Stage { kGateUp, kDown };

__device__ __forceinline__ float swiglu(float gate, float up, float alpha, float limit) {
  gate = gate > limit ? limit : gate;                       // clamp(max=limit), NaN stays NaN
  up = up > limit ? limit : (up < -limit ? -limit : up);    // clamp(-limit, limit)
  const float sigmoid = 1.0f / (1.0f + expf(-alpha * gate));
  return gate * sigmoid * (up + 1.0f);
}

template <typename T, Stage S>
__global__ void __launch_bounds__(kGemmThreads)
moe_gemm_kernel(const T* __restrict__ in, int64_t in_div, int64_t K, const uint8_t* __restrict__ w_blocks,
                const uint8_t* __restrict__ w_scales, const float* __restrict__ bias, int64_t R,
                const float* __restrict__ pair_weights, MoeMxfp4Args a, Workspace ws) {
  const int tile = blockIdx.x;
  if (tile >= *ws.num_tiles) return;  // uniform in the block
  __shared__ int32_t pair_s[kTileRows];
  __shared__ float in_s[kTileRows][kMxfp4Block + 1];  // pitch 33: rows start in different banks
  __shared__ float w_s[kTileCols][kMxfp4Block + 1];
  const int expert = ws.tile_expert[tile];
  const int begin = ws.tile_begin[tile], rows = ws.tile_end[tile] - begin;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  const int64_t nb = K / kMxfp4Block;  // MXFP4 blocks per weight row
  if (const int r = threadIdx.x; r < kTileRows) pair_s[r] = r < rows ? ws.sorted_pairs[begin + r] : 0;
  __syncthreads();

  // Thread (i, cg) accumulates pair row i against weight rows n0 + 8·cg .. n0 + 8·cg + 7.
  const int i = threadIdx.x / (kGemmThreads / kTileRows), cg = threadIdx.x % (kGemmThreads / kTileRows);
  float acc[kColsPerThread] = {};
  // Loading roles: for the weights, two threads per row, 8 bytes (16 values) each.
  const int w_row = threadIdx.x / 2, w_half = threadIdx.x % 2;
  const bool w_valid = n0 + w_row < R;
  const int64_t w_first_block = (static_cast<int64_t>(expert) * R + n0 + w_row) * nb;

  for (int64_t kb = 0; kb < nb; ++kb) {
    for (int e = threadIdx.x; e < kTileRows * kMxfp4Block; e += kGemmThreads) {
      const int r = e / kMxfp4Block, c = e % kMxfp4Block;
      in_s[r][c] = r < rows ? device::to_float(in[(pair_s[r] / in_div) * K + kb * kMxfp4Block + c]) : 0.0f;
    }
    {
      float* dst = &w_s[w_row][w_half * 16];
      if (w_valid) {
        const uint8_t* bytes = w_blocks + (w_first_block + kb) * kMxfp4BlockBytes + w_half * 8;
        const float m = e8m0_multiplier(w_scales[w_first_block + kb]);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const uint8_t byte = bytes[j];
          dst[2 * j] = fp4_value(byte & 0x0F) * m;
          dst[2 * j + 1] = fp4_value(byte >> 4) * m;
        }
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) dst[j] = 0.0f;
      }
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kMxfp4Block; ++c) {
      const float xv = in_s[i][c];
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) acc[j] += xv * w_s[cg * kColsPerThread + j][c];
    }
    __syncthreads();  // in_s and w_s are overwritten by the next step
  }

  if (i >= rows) return;
  const int64_t p = pair_s[i];
  const int64_t col0 = n0 + cg * kColsPerThread;
  if constexpr (S == Stage::kGateUp) {
    T* act = static_cast<T*>(ws.act) + p * a.intermediate;
#pragma unroll
    for (int j = 0; j < kColsPerThread; j += 2) {
      const int64_t col = col0 + j;  // even: the gate row; col + 1 is its up row (R = 2I is even)
      if (col >= R) break;
      const float gate = acc[j] + bias[expert * R + col], up = acc[j + 1] + bias[expert * R + col + 1];
      act[col / 2] = device::from_float<T>(swiglu(gate, up, a.swiglu_alpha, a.swiglu_limit));
    }
  } else {
    float* y = ws.y + p * a.hidden;
    const float weight = pair_weights[p];
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t col = col0 + j;
      if (col >= R) break;
      y[col] = (acc[j] + bias[expert * R + col]) * weight;
    }
  }
}

// 4. out[n, d] = Σ_a y[n·A + a, d], a thread per output element.
__global__ void __launch_bounds__(256)
moe_reduce_kernel(const float* __restrict__ y, float* __restrict__ out, int64_t tokens, int64_t A, int64_t D) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < tokens * D;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / D, d = idx % D;
    float sum = 0.0f;
    for (int64_t slot = 0; slot < A; ++slot) sum += y[(n * A + slot) * D + d];
    out[idx] = sum;
  }
}

template <typename T>
cudaError_t launch_chunk(MoeMxfp4Args a, int64_t first, int64_t tokens, cudaStream_t stream) {
  const int64_t A = a.experts_per_token, pairs = tokens * A;
  const T* x = static_cast<const T*>(a.x) + first * a.hidden;
  const int32_t* ids = a.expert_ids + first * A;
  const float* weights = a.expert_weights + first * A;
  float* out = a.out + first * a.hidden;
  const Workspace ws = carve(a.workspace, tokens, a);
  const unsigned tiles = static_cast<unsigned>(max_tiles(pairs, a.experts));

  const size_t route_smem = sizeof(int32_t) * (3 * a.experts + 2);
  moe_route_kernel<<<1, kRouteThreads, route_smem, stream>>>(ids, static_cast<int32_t>(pairs),
                                                             static_cast<int32_t>(a.experts), ws);
  const int64_t R1 = 2 * a.intermediate, R2 = a.hidden;
  if (R1 > 0)  // I = 0 leaves no activation: y = w·b2
    moe_gemm_kernel<T, Stage::kGateUp><<<dim3(tiles, static_cast<unsigned>(ceil_div(R1, kTileCols))), kGemmThreads, 0,
                                       stream>>>(x, A, a.hidden, a.w1_blocks, a.w1_scales, a.b1, R1, weights, a, ws);
  moe_gemm_kernel<T, Stage::kDown><<<dim3(tiles, static_cast<unsigned>(ceil_div(R2, kTileCols))), kGemmThreads, 0,
                                     stream>>>(static_cast<const T*>(ws.act), 1, a.intermediate, a.w2_blocks,
                                               a.w2_scales, a.b2, R2, weights, a, ws);
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(tokens * a.hidden, 256), 1 << 20));
  moe_reduce_kernel<<<blocks, 256, 0, stream>>>(ws.y, out, tokens, A, a.hidden);
  return cudaGetLastError();
}

}  // namespace

size_t moe_mxfp4_workspace_bytes(const MoeMxfp4Args& args) {
  return carve(nullptr, std::min(args.tokens, kChunkTokens), args).bytes;
}

cudaError_t launch_moe_mxfp4(const MoeMxfp4Args& args, cudaStream_t stream) {
  if (args.tokens == 0 || args.hidden == 0) return cudaSuccess;
  if (args.experts_per_token == 0) {  // no expert at all: the sum is empty
    return cudaMemsetAsync(args.out, 0, sizeof(float) * args.tokens * args.hidden, stream);
  }
  // Route works in int32 pair ids and keeps 3·E + 2 counters in shared memory.
  if (kChunkTokens * args.experts_per_token > INT32_MAX || args.experts > 4000) return cudaErrorInvalidValue;
  for (int64_t first = 0; first < args.tokens; first += kChunkTokens) {
    const int64_t tokens = std::min(kChunkTokens, args.tokens - first);
    const cudaError_t err = args.dtype == DType::kFloat32 ? launch_chunk<float>(args, first, tokens, stream)
                                                          : launch_chunk<__nv_bfloat16>(args, first, tokens, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace gptoss
