// MXFP4 decoding shared by CPU and CUDA code: FP4 E2M1 values and E8M0 block scales.
// Byte j of a 16-byte block holds element 2j (low nibble) and element 2j+1 (high nibble);
// the block's 32 values share the multiplier 2^(scale - 127).
//
// Two layouts of a matrix's rows:
//  - Hugging Face (gpt-oss checkpoints): a row's 16-byte blocks back to back, its scale bytes in an
//    array of their own.
//  - ggml (GGUF files): 17-byte blocks, the scale byte first; byte j of the 16 holds element j (low
//    nibble) and element j + 16 (high). ggml's value table (doubled) and scale (halved) multiply to
//    the same FP4 × 2^(s-127), so the nibbles and scale bytes mean what they mean here.
// Kernels read ggml's nibbles as if they were in the Hugging Face order, so the value they take for
// position p of a block is some other element of it; they store their inputs permuted to meet it
// (input element i at ggml_position(i)) instead of reordering the weights.
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

// Bytes from one block's nibbles (scale) to the next block's, in each layout.
struct Mxfp4Strides {
  int64_t block, scale;
};
constexpr Mxfp4Strides kHfStrides{kMxfp4BlockBytes, 1};
constexpr Mxfp4Strides kGgmlStrides{kMxfp4BlockBytes + 1, kMxfp4BlockBytes + 1};
// The same as types, for kernels that take them at compile time (the Hugging Face layout's speed must
// not pay for the other's strides).
struct HfBlocks {
  static constexpr int64_t kBlock = kHfStrides.block, kScale = kHfStrides.scale;
};
struct GgmlBlocks {
  static constexpr int64_t kBlock = kGgmlStrides.block, kScale = kGgmlStrides.scale;
};

// Where input element i goes when the weights are ggml's: the element that a Hugging Face-order reading
// of block position 2j (2j + 1) gets is ggml's element j (j + 16).
GPTOSS_HD int64_t ggml_position(int64_t i) {
  const int64_t e = i % kMxfp4Block;
  return i - e + (e < kMxfp4Block / 2 ? 2 * e : 2 * (e - kMxfp4Block / 2) + 1);
}

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
