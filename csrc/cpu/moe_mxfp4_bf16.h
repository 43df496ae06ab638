// The AVX-512 BF16 kernels of moe_mxfp4 (csrc/cpu/moe_mxfp4.cpp), for bfloat16 inputs.
//
// With x and act in bfloat16 (the engine's bf16 mode), every product of an FP4 weight (times its
// power-of-two block scale) with an input is exact in float32, so vdpbf16ps, which multiplies bf16
// pairs and accumulates in float32, computes what the AVX2 path computes, with different float32
// summation order, 32 products per instruction and no per-value conversion. Like every bf16
// dot-product instruction it treats subnormal bf16 inputs as zero: inputs below 2^-126 and, in the
// many-token path, weights whose block scale byte is 0 or 1 (real checkpoints use neither).
//
// Decoding one 32-byte chunk (blocks b and b + 1): the bytes are widened to 32 words; vpermw with
// the 32-entry table below (bit 4 of an index ignored: the table repeats) turns the low nibbles into
// the bf16 values of the chunk's even elements and, after `>> 4`, the high nibbles into the odd
// ones.
//  - Few tokens (rows_dot): four blocks at a time, decoded with the same table from the blocks' 16-bit words,
//    against inputs stored in the order the vectors come (quad_position); Σ w·x of each block lands
//    in four float32 lanes, which are multiplied by the block's 2^(s-127) and added up.
//  - Many tokens: a tile's K-step is decoded once with the scale folded into the bf16 words (an
//    exponent add, exact), put back in element order (two vpermt2w), packed into a gemm_bf16.h panel
//    and applied to all the expert's tokens, whose inputs are in element order.
// Callers check avx512_bf16_enabled() (vec.h) first.
#pragma once

#include "vec.h"

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../mxfp4.h"

namespace gptoss {
namespace moe_bf16 {

constexpr int64_t kQuad = 4 * kMxfp4Block;  // values per step of rows_dot: four blocks, one per 128-bit lane

// Where value c (0..127) of a quad is stored in the decode layout of rows_dot's inputs: the order in
// which rows_dot's four decoded vectors come (see there).
inline int quad_position(int c) {
  const int lane = c / kMxfp4Block, e = c % kMxfp4Block;
  // element e sits in nibble e % 4 of the block's 16-bit word e / 4
  return (e % 4) * kMxfp4Block + lane * 8 + e / 4;
}

// How far ahead of the quad being decoded rows_dot prefetches (bytes of blocks). The hardware
// prefetcher alone leaves a busy core waiting on memory: 2 KB ahead took one core from ~13 to ~16
// GB/s of MXFP4 streamed from memory on the 2-core EPYC (0.5 KB: no gain, 4 KB: no more).
constexpr int64_t kPrefetchBytes = 2048;

// bf16 encodings of the FP4 values by nibble, twice.
alignas(64) inline constexpr uint16_t kFp4Bf16[32] = {
    0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0,
    0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0,
    0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0,
    0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};

struct Chunk {
  __m512i even, odd;  // bf16 values of the even / odd elements: block b's sixteen, then block b + 1's
};

// The 32 bytes of blocks b, b + 1 at q (L::kBlock bytes apart), or (last block of an odd row) one
// block and zeros.
template <typename L>
GPTOSS_AVX512_BF16 inline __m256i chunk_bytes(const uint8_t* q, bool two_blocks) {
  const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  if (!two_blocks) return _mm256_zextsi128_si256(first);
  if constexpr (L::kBlock == kMxfp4BlockBytes) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  return _mm256_inserti128_si256(_mm256_castsi128_si256(first),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + L::kBlock)), 1);
}

// The chunk at q: both blocks, or (last block of an odd row) one block and zeros.
template <typename L>
GPTOSS_AVX512_BF16 inline Chunk decode_chunk(const uint8_t* q, bool two_blocks, __m512i table) {
  const __m256i bytes = chunk_bytes<L>(q, two_blocks);
  const __m512i words = _mm512_cvtepu8_epi16(bytes);
  return {_mm512_permutexvar_epi16(words, table), _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table)};
}

// The chunk's values in element order: block b, block b + 1.
struct Blocks {
  __m512i first, second;
};
GPTOSS_AVX512_BF16 inline Blocks in_order(const Chunk& c) {
  alignas(64) static constexpr uint16_t kFirst[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static constexpr uint16_t kSecond[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                       24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  return {_mm512_permutex2var_epi16(c.even, _mm512_load_si512(kFirst), c.odd),
          _mm512_permutex2var_epi16(c.even, _mm512_load_si512(kSecond), c.odd)};
}

GPTOSS_AVX512_BF16 inline __m512 dot_pairs(__m512 acc, __m512i w, const uint16_t* x) {
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_loadu_si512(x));
}

// 2^(s-127) of n ≤ 16 consecutive blocks from the exponent bits (s = 0: the subnormal 2^-127; 255: inf).
GPTOSS_AVX512_BF16 inline __m512 block_multipliers(const uint8_t* sc, int64_t n) {
  const __m128i bytes = _mm_maskz_loadu_epi8(static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1), sc);
  return _mm512_castsi512_ps(
      _mm512_max_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(bytes), 23), _mm512_set1_epi32(0x00400000)));
}

// The same for `blocks` ≤ 4 of ggml's blocks (scale bytes `stride` apart), lanes 4L..4L+3 block L: read
// beside each block, as the chunk's own loads bring them in (a gather at a stride would wait on several
// cache lines at once).
GPTOSS_AVX512_BF16 inline __m512 quad_multipliers_beside(const uint8_t* sc, int64_t stride, int64_t blocks) {
  int32_t exponent[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < blocks; ++i) exponent[i] = int32_t{sc[i * stride]} << 23;
  const __m128i four = _mm_max_epi32(_mm_setr_epi32(exponent[0], exponent[1], exponent[2], exponent[3]),
                                     _mm_set1_epi32(0x00400000));
  return _mm512_castsi512_ps(_mm512_permutexvar_epi32(
      _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_castsi128_si512(four)));
}

// The 64 bytes of `blocks` ≤ 4 blocks `stride` bytes apart, one per 128-bit lane (zeros for missing ones).
GPTOSS_AVX512_BF16 inline __m512i strided_quad(const uint8_t* q, int64_t stride, int64_t blocks) {
  __m512i v = _mm512_setzero_si512();
  for (int64_t i = 0; i < blocks; ++i) {
    const __m128i block = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i * stride));
    switch (i) {  // the lane is an immediate
      case 0: v = _mm512_inserti32x4(v, block, 0); break;
      case 1: v = _mm512_inserti32x4(v, block, 1); break;
      case 2: v = _mm512_inserti32x4(v, block, 2); break;
      default: v = _mm512_inserti32x4(v, block, 3); break;
    }
  }
  return v;
}

// out[r][t·out_stride] = W_r · x_t for S rows W_r (blk[r], sc[r]: read in lockstep, one stream each)
// and MT tokens over nb blocks; x[t] in the decode layout (quad_position), zero padded to whole quads.
// Four blocks at a time, one per 128-bit lane: the 64 bytes are read as 16-bit words, each holding
// four nibbles; vpermw turns nibble j of every word (after a shift by 4j: vpermw reads only the low
// bits of an index) into bf16 values, and after four vdpbf16ps float32 lanes 4L..4L+3 hold block
// L's sum, which meets its 2^(s-127) in one multiply-add.
template <int MT, int S, typename L>
GPTOSS_AVX512_BF16 inline void rows_dot(const uint8_t* const* blk, const uint8_t* const* sc, int64_t nb,
                                        const uint16_t* const* x, float* const* out, int64_t out_stride) {
  const __m512i table = _mm512_load_si512(kFp4Bf16);
  alignas(64) static constexpr int32_t kLaneBlock[4][16] = {  // quad q: lane group L takes block 4q + L
      {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
      {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
      {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
      {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
  __m512 acc[S][MT];
  for (int r = 0; r < S; ++r)
    for (int t = 0; t < MT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const int64_t n = std::min<int64_t>(16, nb - b0);
    __m512 mult[S];
    if constexpr (L::kScale == 1) {  // (ggml's scales sit among the blocks, read with them below)
      for (int r = 0; r < S; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(sc[r] + b0) + kPrefetchBytes / kMxfp4BlockBytes, _MM_HINT_T0);
        mult[r] = block_multipliers(sc[r] + b0, n);
      }
    }
    for (int64_t q = 0; q < n; q += 4) {
      const int64_t blocks = std::min<int64_t>(4, n - q);
      const __mmask64 present = blocks == 4 ? ~__mmask64(0) : (__mmask64(1) << (16 * blocks)) - 1;
      const int64_t off = (b0 + q) * kMxfp4Block;
      const __m512i lanes = _mm512_load_si512(kLaneBlock[q / 4]);
      for (int r = 0; r < S; ++r) {
        const uint8_t* quad = blk[r] + (b0 + q) * L::kBlock;
        _mm_prefetch(reinterpret_cast<const char*>(quad) + kPrefetchBytes, _MM_HINT_T0);
        __m512i words;
        if constexpr (L::kBlock == kMxfp4BlockBytes)
          words = _mm512_maskz_loadu_epi8(present, quad);
        else
          words = strided_quad(quad, L::kBlock, blocks);
        const __m512i w0 = _mm512_permutexvar_epi16(words, table);  // elements 0, 4, 8, ... of each block
        const __m512i w1 = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table);   // 1, 5, 9, ...
        const __m512i w2 = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 8), table);   // 2, 6, 10, ...
        const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 12), table);  // 3, 7, 11, ...
        __m512 s;
        if constexpr (L::kScale == 1)
          s = _mm512_permutexvar_ps(lanes, mult[r]);
        else
          s = quad_multipliers_beside(sc[r] + (b0 + q) * L::kScale, L::kScale, blocks);
        for (int t = 0; t < MT; ++t) {
          const uint16_t* xq = x[t] + off;
          __m512 sum = dot_pairs(_mm512_setzero_ps(), w0, xq);
          sum = dot_pairs(sum, w1, xq + 32);
          sum = dot_pairs(sum, w2, xq + 64);
          sum = dot_pairs(sum, w3, xq + 96);
          acc[r][t] = _mm512_fmadd_ps(sum, s, acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < S; ++r)
    for (int t = 0; t < MT; ++t) out[r][t * out_stride] = _mm512_reduce_add_ps(acc[r][t]);
}

// Blocks [b0, b1) of one row as bf16 words value·2^(s-127), in element order (zero padded to a whole
// chunk), to out.
template <typename L>
GPTOSS_AVX512_BF16 inline void decode_scaled(const uint8_t* blk, const uint8_t* sc, int64_t b0, int64_t b1,
                                             uint16_t* out) {
  const __m512i table = _mm512_load_si512(kFp4Bf16);
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
  for (int64_t b = b0; b < b1; b += 2) {
    const bool two_blocks = b + 1 < b1;
    Chunk w = decode_chunk<L>(blk + b * L::kBlock, two_blocks, table);
    const int s0 = sc[b * L::kScale], s1 = two_blocks ? sc[(b + 1) * L::kScale] : 127;
    uint16_t* o = out + (b - b0) * kMxfp4Block;
    if (s0 >= 2 && s0 <= 252 && s1 >= 2 && s1 <= 252) {
      // FP4 magnitudes have bf16 exponents 126..129: adding s - 127 keeps them normal, so the
      // scaled value is exact. Zeros stay zeros.
      const __m512i delta = _mm512_mask_blend_epi16(0xFFFF0000u,  // block b: words 0-15, block b + 1: 16-31
                                                    _mm512_set1_epi16(static_cast<int16_t>((s0 - 127) << 7)),
                                                    _mm512_set1_epi16(static_cast<int16_t>((s1 - 127) << 7)));
      w.even = _mm512_mask_add_epi16(w.even, _mm512_test_epi16_mask(w.even, magnitude), w.even, delta);
      w.odd = _mm512_mask_add_epi16(w.odd, _mm512_test_epi16_mask(w.odd, magnitude), w.odd, delta);
      const Blocks ordered = in_order(w);
      _mm512_storeu_si512(o, ordered.first);
      _mm512_storeu_si512(o + 32, ordered.second);
    } else {  // extreme scales: through float32 (bf16 is its top half, so the truncation is exact)
      const Blocks ordered = in_order(w);
      alignas(64) uint16_t words[64];
      _mm512_store_si512(words, ordered.first);
      _mm512_store_si512(words + 32, ordered.second);
      const float m[2] = {e8m0_multiplier(static_cast<uint8_t>(s0)), e8m0_multiplier(static_cast<uint8_t>(s1))};
      for (int i = 0; i < 64; ++i) {
        const uint32_t in = static_cast<uint32_t>(words[i]) << 16;
        float v;
        std::memcpy(&v, &in, sizeof(v));
        v *= m[i / 32];
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        o[i] = static_cast<uint16_t>(bits >> 16);
      }
    }
  }
}

}  // namespace moe_bf16
}  // namespace gptoss

#endif
