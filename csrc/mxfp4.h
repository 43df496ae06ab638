// MXFP4 decoding shared by CPU and CUDA code: FP4 E2M1 values and E8M0 block scales.
// Byte j of a 16-byte block holds element 2j (low nibble) and element 2j+1 (high nibble);
// the block's 32 values share the multiplier 2^(scale - 127).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GPTOSS_HD __host__ __device__ __forceinline__
#else
#define GPTOSS_HD inline
#endif

namespace gptoss {

constexpr int kMxfp4Block = 32;        // values per block
constexpr int kMxfp4BlockBytes = 16;   // packed bytes per block

// FP4 E2M1 by nibble: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa.
GPTOSS_HD float fp4_value(uint8_t nibble) {
  const float magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = magnitudes[nibble & 7];
  return (nibble & 8) ? -m : m;
}

// 2^(scale - 127) built from the exponent bits: exact, including the subnormal range.
GPTOSS_HD float e8m0_multiplier(uint8_t scale) {
  if (scale == 0) return 5.877471754111438e-39f;  // 2^-127, a float32 subnormal
  if (scale == 255) return __builtin_inff();      // 2^128 overflows float32, as in the reference
  uint32_t bits = static_cast<uint32_t>(scale) << 23;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

}  // namespace gptoss
