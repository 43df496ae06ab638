// MXFP4 dequantisation on CPU: blocks [.., nb, 16] + E8M0 scales [.., nb] -> [.., nb·32] in float32 or bf16.
//
// Every decoded value is an FP4 value (at most 2 significant bits) times a power of two, so the
// float32 product is exact (subnormals included; scales >= 254 overflow to inf for |v| >= 2, as in
// the reference) and so is its bfloat16 form: the low 16 bits of such a float32 are zero, and
// dropping them equals round-to-nearest-even.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../check.h"
#include "../mxfp4.h"
#include "vec.h"

namespace gptoss {
namespace {

constexpr int64_t kBlocksPerTask = 2048;  // 64 KiB of packed input per task

inline void store_block(float* dst, const float* values) { memcpy(dst, values, kMxfp4Block * sizeof(float)); }
inline void store_block(c10::BFloat16* dst, const float* values) {
  for (int i = 0; i < kMxfp4Block; ++i) dst[i] = c10::BFloat16(values[i]);
}

// Portable decoder of one block: element 2j from the low nibble of byte j, 2j+1 from its high nibble.
template <typename T>
inline void decode_block_scalar(const uint8_t* bytes, uint8_t scale, T* dst) {
  const float m = e8m0_multiplier(scale);
  float values[kMxfp4Block];
  for (int j = 0; j < kMxfp4BlockBytes; ++j) {
    values[2 * j] = fp4_value(bytes[j] & 0x0F) * m;
    values[2 * j + 1] = fp4_value(bytes[j] >> 4) * m;
  }
  store_block(dst, values);
}

#if GPTOSS_AVX2
// 8 nibbles (one per byte) -> 8 floats: magnitude from the table by bits 2-0, sign from bit 3.
inline __m256 decode8(__m128i nibbles, __m256 magnitudes, __m256 multiplier) {
  const __m256i idx = _mm256_cvtepu8_epi32(nibbles);
  const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, idx);  // uses the low 3 bits of idx
  const __m256 sign = _mm256_and_ps(_mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)), _mm256_set1_ps(-0.0f));
  return _mm256_mul_ps(_mm256_or_ps(mag, sign), multiplier);
}

// The block's 32 values in order, as four vectors of 8.
inline void decode_block_avx2(const uint8_t* bytes, uint8_t scale, __m256 magnitudes, __m256 v[4]) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(raw, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  const __m128i first = _mm_unpacklo_epi8(lo, hi);  // elements 0..15: lo0 hi0 lo1 hi1 ...
  const __m128i second = _mm_unpackhi_epi8(lo, hi);  // elements 16..31
  const __m256 m = _mm256_set1_ps(e8m0_multiplier(scale));
  v[0] = decode8(first, magnitudes, m);
  v[1] = decode8(_mm_srli_si128(first, 8), magnitudes, m);
  v[2] = decode8(second, magnitudes, m);
  v[3] = decode8(_mm_srli_si128(second, 8), magnitudes, m);
}

inline void store_vectors(float* dst, const __m256 v[4]) {
  for (int i = 0; i < 4; ++i) _mm256_storeu_ps(dst + 8 * i, v[i]);
}

// Exact bf16 values: keep the top 16 bits of each float32 (see the header comment).
inline void store_vectors(c10::BFloat16* dst, const __m256 v[4]) {
  for (int i = 0; i < 4; i += 2) {
    const __m256i a = _mm256_srli_epi32(_mm256_castps_si256(v[i]), 16);
    const __m256i b = _mm256_srli_epi32(_mm256_castps_si256(v[i + 1]), 16);
    // packus interleaves 128-bit lanes (a0-3 b0-3 a4-7 b4-7); the permute restores a0-7 b0-7.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * i), packed);
  }
}
#endif

template <typename T>
void dequantize(const uint8_t* blocks, const uint8_t* scales, int64_t n_blocks, T* out) {
  at::parallel_for(0, n_blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
#if GPTOSS_AVX2
    float table[8];
    for (int i = 0; i < 8; ++i) table[i] = fp4_value(static_cast<uint8_t>(i));
    const __m256 magnitudes = _mm256_loadu_ps(table);
    __m256 v[4];
    for (int64_t b = begin; b < end; ++b) {
      decode_block_avx2(blocks + b * kMxfp4BlockBytes, scales[b], magnitudes, v);
      store_vectors(out + b * kMxfp4Block, v);
    }
#else
    for (int64_t b = begin; b < end; ++b)
      decode_block_scalar(blocks + b * kMxfp4BlockBytes, scales[b], out + b * kMxfp4Block);
#endif
  });
}

}  // namespace

at::Tensor mxfp4_dequantize_cpu(const at::Tensor& blocks, const at::Tensor& scales, at::ScalarType dtype) {
  const std::vector<int64_t> out_shape = mxfp4_dequantize_out_shape(blocks, scales, dtype);
  const at::Tensor bc = blocks.contiguous(), sc = scales.contiguous();
  at::Tensor out = at::empty(out_shape, blocks.options().dtype(dtype));
  const int64_t n_blocks = sc.numel();
  if (dtype == at::kFloat)
    dequantize(bc.data_ptr<uint8_t>(), sc.data_ptr<uint8_t>(), n_blocks, out.data_ptr<float>());
  else
    dequantize(bc.data_ptr<uint8_t>(), sc.data_ptr<uint8_t>(), n_blocks, out.data_ptr<c10::BFloat16>());
  return out;
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("mxfp4_dequantize", &gptoss::mxfp4_dequantize_cpu); }
