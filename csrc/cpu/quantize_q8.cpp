// Q8_0 quantization on CPU: weight [out, in] (float32, bfloat16 or float16; in a multiple of 32) ->
// int8 q [out, in] and float16 scales d [out, in/32], by llama.cpp's rule for Q8_0 files: per block of
// 32, d = max|w| / 127, q = roundf(w · (1/d)) (halves away from zero; 1/d from the unrounded d, 0 for
// an all-zero block), d stored as float16. Every step is one correctly rounded float32 operation, so
// the result equals the PyTorch twin (engine.int8.quantize_q8_0) bit for bit.
//
// Load-time work (the 20b's unembedding alone is 579M weights): blocks are independent, so they are
// spread over the threads in tasks of whole rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../check.h"
#include "vec.h"

namespace gptoss {
namespace {

constexpr int64_t kQ8Block = 32;
constexpr int64_t kWeightsPerTask = 1 << 16;

template <typename T>
void quantize_block(const T* w, int8_t* q, c10::Half* d) {
  float values[kQ8Block];
  float amax = 0.0f;
  for (int i = 0; i < kQ8Block; ++i) {
    values[i] = static_cast<float>(w[i]);
    amax = std::max(amax, std::fabs(values[i]));
  }
  const float scale = amax / 127.0f;
  const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (int i = 0; i < kQ8Block; ++i) q[i] = static_cast<int8_t>(std::round(values[i] * inverse));
  *d = c10::Half(scale);
}

#if GPTOSS_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) { return load_bf16x8(p); }
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// roundf on 8 lanes: trunc(x), plus sign(x) where |x - trunc(x)| >= 0.5 (that difference is exact).
inline __m256i round_half_away(__m256 x) {
  const __m256 whole = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 fraction = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(x, whole));
  const __m256 up = _mm256_cmp_ps(fraction, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(x, sign_bit));
  return _mm256_cvttps_epi32(_mm256_add_ps(whole, _mm256_and_ps(up, one)));
}

// The same arithmetic as the scalar quantize_block, 8 lanes at a time.
template <typename T>
void quantize_block_avx2(const T* w, int8_t* q, c10::Half* d) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int u = 0; u < 4; ++u) {
    v[u] = load8(w + 8 * u);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[u]));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, amax);
  const float block_max = *std::max_element(lanes, lanes + 8);
  const float scale = block_max / 127.0f;
  const __m256 inverse = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
  __m256i r[4];
  for (int u = 0; u < 4; ++u) r[u] = round_half_away(_mm256_mul_ps(v[u], inverse));
  // int32 -> int8 with saturating packs (values are within ±127); the packs interleave 128-bit
  // lanes, which the permute puts back in order.
  const __m256i words = _mm256_packs_epi32(r[0], r[1]), words2 = _mm256_packs_epi32(r[2], r[3]);
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words2),
                                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), bytes);
  *d = c10::Half(scale);
}
#endif

template <typename T>
void quantize_blocks(const T* w, int8_t* q, c10::Half* d, int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
#if GPTOSS_AVX2
    quantize_block_avx2(w + b * kQ8Block, q + b * kQ8Block, d + b);
#else
    quantize_block(w + b * kQ8Block, q + b * kQ8Block, d + b);
#endif
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_q8_0_cpu(const at::Tensor& weight) {
  GPTOSS_CHECK_DIM(weight, 2);
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16 ||
                  weight.scalar_type() == at::kHalf,
              "weight must be float32, bfloat16 or float16, got ", weight.scalar_type());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols % kQ8Block == 0, "Q8_0 needs rows that split into blocks of ", kQ8Block, ", got shape ",
              weight.sizes());
  const at::Tensor w = weight.contiguous();
  at::Tensor q = at::empty({rows, cols}, w.options().dtype(at::kChar));
  at::Tensor d = at::empty({rows, cols / kQ8Block}, w.options().dtype(at::kHalf));
  if (w.numel() == 0) return {q, d};
  const int64_t rows_per_task = std::max<int64_t>(1, kWeightsPerTask / cols);
  const auto run = [&](auto* src) {
    int8_t* qs = q.data_ptr<int8_t>();
    c10::Half* ds = d.data_ptr<c10::Half>();
    at::parallel_for(0, rows, rows_per_task, [&](int64_t begin, int64_t end) {
      quantize_blocks(src, qs, ds, begin * (cols / kQ8Block), end * (cols / kQ8Block));
    });
  };
  if (w.scalar_type() == at::kFloat)
    run(w.data_ptr<float>());
  else if (w.scalar_type() == at::kBFloat16)
    run(w.data_ptr<c10::BFloat16>());
  else
    run(w.data_ptr<c10::Half>());
  return {q, d};
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("quantize_q8_0", &gptoss::quantize_q8_0_cpu); }
