// Small CPU helpers: bf16 <-> fp32, AVX2 building blocks (with scalar fallbacks), the choice of kernel family.
#pragma once
#include <c10/util/BFloat16.h>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GPTOSS_AVX2 1
#endif

// AVX-512 BF16 and AMX kernels carry target attributes, so they compile with the AVX2 flags of the
// rest of the extension; callers must check avx512_bf16_enabled() / amx_enabled() first.
#if GPTOSS_AVX2 && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#define GPTOSS_HAVE_AVX512_BF16_KERNELS 1
#define GPTOSS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#if defined(__clang__) || __GNUC__ >= 11  // the first GCC with the AMX intrinsics
#define GPTOSS_HAVE_AMX_KERNELS 1
#define GPTOSS_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))
#endif
#endif

namespace gptoss {

inline float bf16_to_float(c10::BFloat16 v) { return static_cast<float>(v); }

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
// The kernel families for bf16 work, each needing the one before: AVX2+FMA, AVX-512 BF16 (vdpbf16ps),
// AMX-BF16 (tile matrix multiply, Sapphire Rapids and later).
enum class CpuIsa { kAvx2 = 0, kAvx512Bf16 = 1, kAmx = 2 };

inline bool cpu_has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

// Linux lends the 8 KB of AMX tile state to a process only when asked (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); the grant covers all its threads.
inline bool cpu_has_amx() {
#if GPTOSS_HAVE_AMX_KERNELS && defined(__linux__)
  static const bool has = cpu_has_avx512_bf16() && __builtin_cpu_supports("amx-tile") &&
                          __builtin_cpu_supports("amx-bf16") &&
                          syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return has;
#else
  return false;
#endif
}

// The best family this CPU runs, capped by GPTOSS_CPU_ISA (avx2 | avx512_bf16 | amx; read on every call,
// so a test or a user can switch without rebuilding).
inline CpuIsa cpu_isa() {
  CpuIsa best = cpu_has_amx() ? CpuIsa::kAmx : cpu_has_avx512_bf16() ? CpuIsa::kAvx512Bf16 : CpuIsa::kAvx2;
  const char* cap = std::getenv("GPTOSS_CPU_ISA");
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0) return CpuIsa::kAvx2;
  if (cap != nullptr && std::strcmp(cap, "avx512_bf16") == 0 && best == CpuIsa::kAmx) return CpuIsa::kAvx512Bf16;
  return best;
}

inline bool avx512_bf16_enabled() { return cpu_isa() >= CpuIsa::kAvx512Bf16; }
inline bool amx_enabled() { return cpu_isa() == CpuIsa::kAmx; }
#endif

#if GPTOSS_AVX2
// 8 bf16 values -> 8 fp32: a bf16 is the top half of an fp32.
inline __m256 load_bf16x8(const c10::BFloat16* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// A prefetch into L2 that the compiler keeps: GCC deletes a loop of _mm_prefetch calls and nothing
// else as free of side effects (it did in moe_mxfp4.cpp's prefetch_next_tile).
inline void prefetch_l2(const void* p) { asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p))); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

}  // namespace gptoss
