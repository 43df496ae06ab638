// Small CPU helpers: bf16 <-> fp32, AVX2 building blocks (with scalar fallbacks), AVX-512 BF16 dispatch.
#pragma once
#include <c10/util/BFloat16.h>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GPTOSS_AVX2 1
#endif

// AVX-512 BF16 kernels carry this target attribute, so they compile with the AVX2 flags of the rest
// of the extension; callers must check avx512_bf16_enabled() first.
#if GPTOSS_AVX2 && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cstdlib>
#define GPTOSS_HAVE_AVX512_BF16_KERNELS 1
#define GPTOSS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace gptoss {

inline float bf16_to_float(c10::BFloat16 v) { return static_cast<float>(v); }

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
// True when this CPU runs the AVX-512 BF16 kernels and GPTOSS_CPU_ISA does not ask for the AVX2 ones
// (read on every call, so a test or a user can switch without rebuilding).
inline bool avx512_bf16_enabled() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512bf16");
  const char* isa = std::getenv("GPTOSS_CPU_ISA");
  return supported && !(isa != nullptr && std::strcmp(isa, "avx2") == 0);
}
#endif

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
