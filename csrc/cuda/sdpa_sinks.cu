// Attention with sinks on CUDA: grouped-query attention over a key cache whose keys carry absolute
// positions, a per-head sink logit in the softmax denominator, and an optional sliding window.
//
// Layout: q [B, T, H, Dh] and k, v [B, K, S, Dh] with arbitrary strides except a contiguous last
// dim (the full-attention cache hands over a slice of a larger buffer); query head h reads kv head
// h / G, G = H / K; out [B, T, H, Dh] float32, contiguous. Key s is visible to query t iff
// 0 <= k_pos[s] <= q_pos[t] and (window <= 0 or q_pos[t] - k_pos[s] < window): keys may come in
// any order (ring buffers) and -1 marks an empty slot.
//
// Both kernels use the online softmax: per query row a running max m, denominator l and unnormalised
// output acc; each new batch of scores with max c moves m to m' = max(m, c), rescales l and acc by
// exp(m - m') and adds exp(score - m'). The sink is a key without a value, so it is folded in up front
// as the starting state m = sink, l = exp(sink - m) = 1, acc = 0. A row that sees no key keeps
// acc = 0 and outputs 0, like the reference (the sink takes all the weight).
//
// Decode (T <= kSdpaDecodeMaxTokens): one block per (batch, query, kv head, slice of the keys),
// holding up to kDecodeHeads query heads of that kv head, so every key row is read once for all of
// them. With more than one slice per row (to fill the GPU when B·T·K blocks are too few, "split-K"),
// each block leaves (m, l, acc) in the workspace and a second kernel merges the slices; the sink
// is folded into slice 0 only.
//
// Prefill: one block per (batch, kv head, tile of kPrefillRows rows), a row being one (query, head
// of the group) pair, so the G heads sharing a kv head also share its key/value tiles. Keys are
// staged kPrefillKeys at a time in shared memory; shared memory and registers do not depend on T or
// S, and a key tile no row of the block can see is skipped before its values are loaded.
#include <algorithm>

#include "common.cuh"

namespace gptoss {
namespace {

constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ bool key_visible(int64_t q_pos, int64_t k_pos, int64_t window) {
  return k_pos >= 0 && k_pos <= q_pos && (window <= 0 || q_pos - k_pos < window);
}

// exp(x - m) for the online softmax, 0 while nothing has been seen (m = -inf), where exp(-inf + inf)
// would be NaN.
__device__ __forceinline__ float exp_shifted(float x, float m) { return m == kNegInf ? 0.0f : expf(x - m); }

// Rescale factor exp(m_old - m_new) of the running state when the max moves from m_old to m_new.
__device__ __forceinline__ float rescale(float m_old, float m_new) {
  return m_new == kNegInf ? 1.0f : expf(m_old - m_new);
}

// ---------------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------------

constexpr int kDecodeThreads = 128;  // 4 warps
constexpr int kDecodeWarps = kDecodeThreads / device::kWarp;
constexpr int kDecodeHeads = 8;      // query heads per block (grid.y covers larger groups)
constexpr int kDecodeChunk = 64;     // keys scored per step
constexpr int64_t kMinKeysPerSplit = 256;
constexpr int kMaxSplits = 64;

int64_t decode_head_groups(const SdpaSinksArgs& a) {
  return ceil_div(a.heads / a.kv_heads, kDecodeHeads);
}

size_t decode_smem_bytes(const SdpaSinksArgs& a) {
  // q_s and acc_s [kDecodeHeads][Dh], p_s [kDecodeHeads][kDecodeChunk], m_s, l_s, alpha_s [kDecodeHeads]
  return sizeof(float) * (2 * kDecodeHeads * a.head_dim + kDecodeHeads * kDecodeChunk + 3 * kDecodeHeads);
}

// grid: x = key slice, y = kv head · head groups + head group, z = batch · T + query.
template <typename TQ, typename TKV>
__global__ void __launch_bounds__(kDecodeThreads) sdpa_decode_kernel(SdpaSinksArgs a) {
  extern __shared__ float smem[];
  const int64_t Dh = a.head_dim;
  const int G = static_cast<int>(a.heads / a.kv_heads);
  const int groups = (G + kDecodeHeads - 1) / kDecodeHeads;
  const int kvh = blockIdx.y / groups, g0 = (blockIdx.y % groups) * kDecodeHeads;
  const int nh = min(kDecodeHeads, G - g0);  // query heads of this block: kvh·G + g0 + [0, nh)
  const int64_t b = blockIdx.z / a.tokens, t = blockIdx.z % a.tokens;
  const int split = blockIdx.x;
  const int64_t per_split = (a.keys + a.num_splits - 1) / a.num_splits;
  const int64_t s_begin = split * per_split, s_end = min(a.keys, s_begin + per_split);
  const int lane = threadIdx.x % device::kWarp, warp = threadIdx.x / device::kWarp;

  float* q_s = smem;                              // [kDecodeHeads][Dh] query rows as float32
  float* acc_s = q_s + kDecodeHeads * Dh;         // [kDecodeHeads][Dh] unnormalised outputs
  float* p_s = acc_s + kDecodeHeads * Dh;         // [kDecodeHeads][kDecodeChunk] scores, then weights
  float* m_s = p_s + kDecodeHeads * kDecodeChunk; // [kDecodeHeads] running max
  float* l_s = m_s + kDecodeHeads;                // [kDecodeHeads] running denominator
  float* alpha_s = l_s + kDecodeHeads;            // [kDecodeHeads] rescale factor of the current chunk

  const TQ* q = static_cast<const TQ*>(a.q);
  const TKV* k = static_cast<const TKV*>(a.k) + b * a.k_stride_batch + kvh * a.k_stride_head;
  const TKV* v = static_cast<const TKV*>(a.v) + b * a.v_stride_batch + kvh * a.v_stride_head;
  for (int64_t e = threadIdx.x; e < nh * Dh; e += blockDim.x) {
    const int64_t g = e / Dh, d = e % Dh, h = kvh * G + g0 + g;
    q_s[e] = device::to_float(q[b * a.q_stride_batch + t * a.q_stride_token + h * a.q_stride_head + d]);
    acc_s[e] = 0.0f;
  }
  if (const int g = threadIdx.x; g < nh) {
    const bool seed = split == 0;  // the sink joins exactly one slice
    m_s[g] = seed ? a.sinks[kvh * G + g0 + g] : kNegInf;
    l_s[g] = seed ? 1.0f : 0.0f;
  }
  const int64_t qp = a.q_pos[t];
  __syncthreads();

  for (int64_t c0 = s_begin; c0 < s_end; c0 += kDecodeChunk) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kDecodeChunk), s_end - c0));
    // 1. Scores: a warp per key, its lanes striding over Dh (coalesced key reads), one partial dot
    //    product per head of the block; invisible keys score -inf without being read.
    for (int j = warp; j < n; j += kDecodeWarps) {
      const int64_t s = c0 + j;
      if (!key_visible(qp, a.k_pos[s], a.sliding_window)) {  // same answer in every lane
        if (lane < nh) p_s[lane * kDecodeChunk + j] = kNegInf;
        continue;
      }
      const TKV* kr = k + s * a.k_stride_key;
      float dot[kDecodeHeads];
#pragma unroll
      for (int g = 0; g < kDecodeHeads; ++g) dot[g] = 0.0f;
      for (int64_t d = lane; d < Dh; d += device::kWarp) {
        const float kd = device::to_float(kr[d]);
#pragma unroll
        for (int g = 0; g < kDecodeHeads; ++g)
          if (g < nh) dot[g] += q_s[g * Dh + d] * kd;
      }
#pragma unroll
      for (int g = 0; g < kDecodeHeads; ++g) {
        if (g >= nh) break;  // uniform across the warp
        const float sum = device::warp_sum(dot[g]);
        if (lane == 0) p_s[g * kDecodeChunk + j] = sum * a.sm_scale;
      }
    }
    __syncthreads();
    // 2. Online softmax update: a warp per head turns the chunk's scores into weights in place.
    for (int g = warp; g < nh; g += kDecodeWarps) {
      float* p = p_s + g * kDecodeChunk;
      float chunk_max = kNegInf;
      for (int j = lane; j < n; j += device::kWarp) chunk_max = fmaxf(chunk_max, p[j]);
      chunk_max = device::warp_max(chunk_max);
      const float m_old = m_s[g], m_new = fmaxf(m_old, chunk_max);
      float sum = 0.0f;
      for (int j = lane; j < n; j += device::kWarp) {
        p[j] = exp_shifted(p[j], m_new);
        sum += p[j];
      }
      sum = device::warp_sum(sum);
      if (lane == 0) {
        const float alpha = rescale(m_old, m_new);
        m_s[g] = m_new;
        l_s[g] = l_s[g] * alpha + sum;
        alpha_s[g] = alpha;
      }
    }
    __syncthreads();
    // 3. acc = acc·alpha + Σ_j p_j·v_j: a thread per (head, dim), consecutive threads reading
    //    consecutive dims of one value row. Zero weights (masked keys) are skipped, so the values of
    //    empty slots are never read.
    for (int64_t e = threadIdx.x; e < nh * Dh; e += blockDim.x) {
      const int64_t g = e / Dh, d = e % Dh;
      const float* p = p_s + g * kDecodeChunk;
      float sum = 0.0f;
      for (int j = 0; j < n; ++j)
        if (p[j] != 0.0f) sum += p[j] * device::to_float(v[(c0 + j) * a.v_stride_key + d]);
      acc_s[e] = acc_s[e] * alpha_s[g] + sum;
    }
    __syncthreads();  // p_s, alpha_s are rewritten by the next chunk
  }

  // Output row of (b, t, h) in out [B, T, H, Dh]; the workspace holds [num_splits][B·T·H][Dh + 2]:
  // acc, then m and l.
  const int64_t rows = a.batch * a.tokens * a.heads;
  for (int64_t e = threadIdx.x; e < nh * Dh; e += blockDim.x) {
    const int64_t g = e / Dh, d = e % Dh;
    const int64_t row = (b * a.tokens + t) * a.heads + kvh * G + g0 + g;
    if (a.num_splits == 1) {
      a.out[row * Dh + d] = acc_s[e] / l_s[g];
    } else {
      float* part = a.workspace + (split * rows + row) * (Dh + 2);
      part[d] = acc_s[e];
      if (d == 0) {
        part[Dh] = m_s[g];
        part[Dh + 1] = l_s[g];
      }
    }
  }
}

// Merges the slices of one output row: with M = max_i m_i, out = Σ_i acc_i·e^(m_i - M) / Σ_i l_i·e^(m_i - M).
// One block per row, a thread per dim; every thread recomputes the few slice factors itself.
__global__ void __launch_bounds__(128) sdpa_combine_kernel(SdpaSinksArgs a) {
  const int64_t row = blockIdx.x, rows = a.batch * a.tokens * a.heads, Dh = a.head_dim;
  const int64_t pitch = rows * (Dh + 2);  // floats between the slices of one row
  const float* part = a.workspace + row * (Dh + 2);
  float m_max = kNegInf;
  for (int i = 0; i < a.num_splits; ++i) m_max = fmaxf(m_max, part[i * pitch + Dh]);
  float denominator = 0.0f;
  for (int i = 0; i < a.num_splits; ++i)
    denominator += part[i * pitch + Dh + 1] * exp_shifted(part[i * pitch + Dh], m_max);
  for (int64_t d = threadIdx.x; d < Dh; d += blockDim.x) {
    float sum = 0.0f;
    for (int i = 0; i < a.num_splits; ++i) sum += part[i * pitch + d] * exp_shifted(part[i * pitch + Dh], m_max);
    a.out[row * Dh + d] = sum / denominator;
  }
}

// ---------------------------------------------------------------------------------------------------
// Prefill
// ---------------------------------------------------------------------------------------------------

constexpr int kPrefillThreads = 128;  // 4 warps
constexpr int kPrefillWarps = kPrefillThreads / device::kWarp;
constexpr int kPrefillRows = 16;           // (query, head) rows per block
constexpr int kPrefillKeys = device::kWarp;  // keys per tile: one per lane in the softmax step

size_t prefill_smem_bytes(const SdpaSinksArgs& a) {
  const int64_t Dh = a.head_dim, pitch = Dh + 1;
  // int64 positions first (alignment), then q_s, k_s [rows|keys][Dh + 1], v_s [keys][Dh],
  // s_s [rows][keys], acc_s [rows][Dh], m_s, l_s, alpha_s [rows].
  return sizeof(int64_t) * (kPrefillRows + kPrefillKeys) +
         sizeof(float) * ((kPrefillRows + kPrefillKeys) * pitch + kPrefillKeys * Dh + kPrefillRows * kPrefillKeys +
                          kPrefillRows * Dh + 3 * kPrefillRows);
}

// grid: x = tile of rows (row r = query r / G, head r % G of the group), y = kv head, z = batch.
template <typename TQ, typename TKV>
__global__ void __launch_bounds__(kPrefillThreads) sdpa_prefill_kernel(SdpaSinksArgs a) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  const int64_t Dh = a.head_dim, pitch = Dh + 1;  // odd pitch: rows of q_s/k_s start in different banks
  const int64_t G = a.heads / a.kv_heads;
  const int64_t kvh = blockIdx.y, b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kPrefillRows;
  const int lane = threadIdx.x % device::kWarp, warp = threadIdx.x / device::kWarp;

  int64_t* qpos_s = reinterpret_cast<int64_t*>(smem_bytes);  // [rows], -1 for rows past T·G
  int64_t* kpos_s = qpos_s + kPrefillRows;                  // [keys]
  float* q_s = reinterpret_cast<float*>(kpos_s + kPrefillKeys);  // [rows][pitch]
  float* k_s = q_s + kPrefillRows * pitch;                   // [keys][pitch]
  float* v_s = k_s + kPrefillKeys * pitch;                   // [keys][Dh]
  float* s_s = v_s + kPrefillKeys * Dh;                      // [rows][keys] scores, then weights
  float* acc_s = s_s + kPrefillRows * kPrefillKeys;          // [rows][Dh]
  float* m_s = acc_s + kPrefillRows * Dh;
  float* l_s = m_s + kPrefillRows;
  float* alpha_s = l_s + kPrefillRows;

  const TQ* q = static_cast<const TQ*>(a.q);
  const TKV* k = static_cast<const TKV*>(a.k) + b * a.k_stride_batch + kvh * a.k_stride_head;
  const TKV* v = static_cast<const TKV*>(a.v) + b * a.v_stride_batch + kvh * a.v_stride_head;
  const int64_t total_rows = a.tokens * G;

  for (int64_t e = threadIdx.x; e < kPrefillRows * Dh; e += blockDim.x) {
    const int64_t i = e / Dh, d = e % Dh, r = r0 + i;
    float value = 0.0f;
    if (r < total_rows) {
      const int64_t t = r / G, h = kvh * G + r % G;
      value = device::to_float(q[b * a.q_stride_batch + t * a.q_stride_token + h * a.q_stride_head + d]);
    }
    q_s[i * pitch + d] = value;
    acc_s[i * Dh + d] = 0.0f;
  }
  if (threadIdx.x < kPrefillRows) {
    const int i = threadIdx.x;
    const int64_t r = r0 + i;
    const bool valid = r < total_rows;
    qpos_s[i] = valid ? a.q_pos[r / G] : -1;  // -1: no key has a position <= -1 and >= 0
    m_s[i] = valid ? a.sinks[kvh * G + r % G] : 0.0f;
    l_s[i] = 1.0f;
  }
  __syncthreads();

  for (int64_t s0 = 0; s0 < a.keys; s0 += kPrefillKeys) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kPrefillKeys), a.keys - s0));
    // 1. Stage the key tile (a row of Dh elements per key, consecutive threads on consecutive dims).
    if (const int j = threadIdx.x; j < kPrefillKeys) kpos_s[j] = j < n ? a.k_pos[s0 + j] : -1;
    for (int64_t e = threadIdx.x; e < n * Dh; e += blockDim.x) {
      const int64_t j = e / Dh, d = e % Dh;
      k_s[j * pitch + d] = device::to_float(k[(s0 + j) * a.k_stride_key + d]);
    }
    __syncthreads();
    // 2. Scores of the rows × keys tile, -inf where masked (including keys past S: k_pos -1).
    bool any_visible = false;
    for (int e = threadIdx.x; e < kPrefillRows * kPrefillKeys; e += blockDim.x) {
      const int i = e / kPrefillKeys, j = e % kPrefillKeys;
      float score = kNegInf;
      if (key_visible(qpos_s[i], kpos_s[j], a.sliding_window)) {
        float dot = 0.0f;
        for (int64_t d = 0; d < Dh; ++d) dot += q_s[i * pitch + d] * k_s[j * pitch + d];
        score = dot * a.sm_scale;
        any_visible = true;
      }
      s_s[e] = score;
    }
    // Also the barrier after which k_s and kpos_s may be overwritten.
    if (!__syncthreads_or(any_visible)) continue;  // the same answer in every thread
    // 3. Stage the value tile.
    for (int64_t e = threadIdx.x; e < n * Dh; e += blockDim.x) {
      const int64_t j = e / Dh, d = e % Dh;
      v_s[j * Dh + d] = device::to_float(v[(s0 + j) * a.v_stride_key + d]);
    }
    // 4. Online softmax update, a warp per row and a lane per key.
    for (int i = warp; i < kPrefillRows; i += kPrefillWarps) {
      const float score = s_s[i * kPrefillKeys + lane];
      const float m_old = m_s[i], m_new = fmaxf(m_old, device::warp_max(score));
      const float p = exp_shifted(score, m_new);
      const float sum = device::warp_sum(p);
      s_s[i * kPrefillKeys + lane] = p;
      if (lane == 0) {
        const float alpha = rescale(m_old, m_new);
        m_s[i] = m_new;
        l_s[i] = l_s[i] * alpha + sum;
        alpha_s[i] = alpha;
      }
    }
    __syncthreads();
    // 5. acc = acc·alpha + Σ_j p_j·v_j, a thread per (row, dim); masked keys have p = 0 and are
    //    skipped (their value rows may hold anything, e.g. empty slots).
    for (int64_t e = threadIdx.x; e < kPrefillRows * Dh; e += blockDim.x) {
      const int64_t i = e / Dh, d = e % Dh;
      const float* p = s_s + i * kPrefillKeys;
      float sum = 0.0f;
      for (int j = 0; j < n; ++j)
        if (p[j] != 0.0f) sum += p[j] * v_s[j * Dh + d];
      acc_s[e] = acc_s[e] * alpha_s[i] + sum;
    }
    __syncthreads();  // s_s, v_s, alpha_s are rewritten by the next tile
  }

  for (int64_t e = threadIdx.x; e < kPrefillRows * Dh; e += blockDim.x) {
    const int64_t i = e / Dh, d = e % Dh, r = r0 + i;
    if (r >= total_rows) continue;
    const int64_t t = r / G, h = kvh * G + r % G;
    a.out[((b * a.tokens + t) * a.heads + h) * Dh + d] = acc_s[e] / l_s[i];
  }
}

// Kernels needing more than the default 48 KiB of dynamic shared memory must opt in.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename TQ, typename TKV>
cudaError_t launch(const SdpaSinksArgs& a, cudaStream_t stream) {
  if (a.tokens <= kSdpaDecodeMaxTokens) {
    const size_t smem = decode_smem_bytes(a);
    auto kernel = sdpa_decode_kernel<TQ, TKV>;
    if (cudaError_t err = allow_smem(kernel, smem); err != cudaSuccess) return err;
    const dim3 grid(a.num_splits, static_cast<unsigned>(a.kv_heads * decode_head_groups(a)),
                    static_cast<unsigned>(a.batch * a.tokens));
    kernel<<<grid, kDecodeThreads, smem, stream>>>(a);
    if (a.num_splits > 1) {
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      const int threads = static_cast<int>(std::min<int64_t>(128, ceil_div(a.head_dim, device::kWarp) * device::kWarp));
      sdpa_combine_kernel<<<static_cast<unsigned>(a.batch * a.tokens * a.heads), threads, 0, stream>>>(a);
    }
  } else {
    const size_t smem = prefill_smem_bytes(a);
    auto kernel = sdpa_prefill_kernel<TQ, TKV>;
    if (cudaError_t err = allow_smem(kernel, smem); err != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>(ceil_div(a.tokens * (a.heads / a.kv_heads), kPrefillRows)),
                    static_cast<unsigned>(a.kv_heads), static_cast<unsigned>(a.batch));
    kernel<<<grid, kPrefillThreads, smem, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace

void sdpa_sinks_plan(SdpaSinksArgs& a, int sm_count) {
  a.num_splits = 1;
  if (a.tokens > kSdpaDecodeMaxTokens || a.keys <= kMinKeysPerSplit) return;
  // Aim at two blocks per multiprocessor, each slice keeping at least kMinKeysPerSplit keys.
  const int64_t blocks = a.batch * a.tokens * a.kv_heads * decode_head_groups(a);
  int64_t splits = std::min<int64_t>(ceil_div(2 * static_cast<int64_t>(sm_count), blocks),
                                     ceil_div(a.keys, kMinKeysPerSplit));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kMaxSplits));
  splits = ceil_div(a.keys, ceil_div(a.keys, splits));  // no empty slice
  a.num_splits = static_cast<int32_t>(splits);
}

size_t sdpa_sinks_workspace_floats(const SdpaSinksArgs& a) {
  if (a.num_splits <= 1) return 0;
  return static_cast<size_t>(a.num_splits) * a.batch * a.tokens * a.heads * (a.head_dim + 2);
}

cudaError_t launch_sdpa_sinks(const SdpaSinksArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.tokens == 0 || args.heads == 0 || args.head_dim == 0) return cudaSuccess;
  if (args.batch * args.tokens > 65535 && args.tokens <= kSdpaDecodeMaxTokens) return cudaErrorInvalidConfiguration;
  const bool q32 = args.q_dtype == DType::kFloat32, kv32 = args.kv_dtype == DType::kFloat32;
  if (q32 && kv32) return launch<float, float>(args, stream);
  if (q32) return launch<float, __nv_bfloat16>(args, stream);
  if (kv32) return launch<__nv_bfloat16, float>(args, stream);
  return launch<__nv_bfloat16, __nv_bfloat16>(args, stream);
}

}  // namespace gptoss
