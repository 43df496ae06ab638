// Small CPU helpers: bf16 <-> fp32 and AVX2 building blocks (with scalar fallbacks).
#pragma once
#include <c10/util/BFloat16.h>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GPTOSS_AVX2 1
#endif

namespace gptoss {

inline float bf16_to_float(c10::BFloat16 v) { return static_cast<float>(v); }

#if GPTOSS_AVX2
// 8 bf16 values -> 8 fp32: a bf16 is the top half of an fp32.
inline __m256 load_bf16x8(const c10::BFloat16* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

}  // namespace gptoss
