// The AMX pieces of moe_mxfp4 (csrc/cpu/moe_mxfp4.cpp) for many tokens per expert with bf16 inputs.
//
// A tile of 32 weight rows is decoded once into A tiles (amx.h) and multiplied with the B panels of
// all the expert's tokens. The block scale is folded into the decoded values: bf16(v·2^(s-127)) for
// FP4 value v and scale byte s is looked up in a 256 × 16 table, exact wherever it is a bf16 normal
// (2 ≤ s ≤ 252 for every v); like the other bf16 paths, the tile multiply then reads subnormals as zero
// (scale bytes 0 and 1) and 255 gives inf, or NaN for zeros.
//
// K order. A 32-byte chunk (blocks b, b + 1 of a row: its values 64c..64c + 63) is widened to 32 words;
// one vpermw turns the low nibbles into the chunk's even values and another the high nibbles into its
// odd ones, with bit 4 of the index picking block b's or block b + 1's scaled table. The even values
// are K tile 2c (slot s = value 2s of the chunk), the odd ones K tile 2c + 1 (slot s = value 2s + 1), so
// a token's B panel for K tile 2c + h holds the pairs (x[64c + 4kp + h], x[64c + 4kp + 2 + h]):
// the even or odd words of the token's chunk, one permute away from its element-order row.
#pragma once

#include "amx.h"

#if GPTOSS_HAVE_AMX_KERNELS
#include <cstdint>

#include "../mxfp4.h"
#include "moe_mxfp4_bf16.h"

namespace gptoss {
namespace moe_amx {

using amx::kATileWords;

struct ScaledFp4Table {
  alignas(64) uint16_t value[256][16];  // bf16 bits of fp4_value(v)·2^(s-127), [s][v]
  ScaledFp4Table() {
    for (int s = 0; s < 256; ++s) {
      for (int v = 0; v < 16; ++v) {
        const float f = fp4_value(static_cast<uint8_t>(v)) * e8m0_multiplier(static_cast<uint8_t>(s));
        uint32_t bits;
        std::memcpy(&bits, &f, sizeof(bits));
        value[s][v] = static_cast<uint16_t>(bits >> 16);  // exact: the product has at most 2 significant bits
      }
    }
  }
};
inline const ScaledFp4Table& scaled_fp4_table() {
  static const ScaledFp4Table table;
  return table;
}

// Row r (0..31) of a 32-row tile: its nb blocks decoded and scaled into K tiles 0 .. 2·ceil(nb/2) - 1,
// out[j·kATileWords + r·32 + slot]. A lone last block leaves the chunk's second half zero.
template <typename L>
GPTOSS_AMX inline void decode_row(const uint8_t* blk, const uint8_t* sc, int64_t nb, int64_t r, uint16_t* out) {
  const ScaledFp4Table& table = scaled_fp4_table();
  const __m512i block_bit = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(0x10), 1);
  const __m512i low_nibble = _mm512_set1_epi16(0x0F);
  uint16_t* even = out + r * amx::kTileK;
  for (int64_t b = 0; b < nb; b += 2, even += 2 * kATileWords) {
    const bool two_blocks = b + 1 < nb;
    const __m512i words = _mm512_cvtepu8_epi16(moe_bf16::chunk_bytes<L>(blk + b * L::kBlock, two_blocks));
    const __m512i scaled = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(table.value[sc[b * L::kScale]]))),
        _mm256_load_si256(reinterpret_cast<const __m256i*>(table.value[two_blocks ? sc[(b + 1) * L::kScale] : 127])), 1);
    const __m512i lo = _mm512_ternarylogic_epi32(words, low_nibble, block_bit, 0xEA);  // (w & 0xF) | bit
    const __m512i hi = _mm512_or_si512(_mm512_srli_epi16(words, 4), block_bit);
    _mm512_storeu_si512(even, _mm512_permutexvar_epi16(lo, scaled));
    _mm512_storeu_si512(even + kATileWords, _mm512_permutexvar_epi16(hi, scaled));
  }
}

// amx::pack_b's source for the experts' inputs: token n's element-order row (zero padded to whole
// chunks); K tile 2c + h is the even (h = 0) or odd (h = 1) words of chunk c.
struct ChunkHalves {
  const uint16_t* const* rows;
  GPTOSS_AMX __m512i operator()(int64_t n, int64_t j) const {
    alignas(64) static constexpr uint16_t kEven[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                                       32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
    const uint16_t* chunk = rows[n] + j / 2 * 2 * amx::kTileK;
    const __m512i index = _mm512_add_epi16(_mm512_load_si512(kEven), _mm512_set1_epi16(static_cast<int16_t>(j & 1)));
    return _mm512_permutex2var_epi16(_mm512_loadu_si512(chunk), index, _mm512_loadu_si512(chunk + 32));
  }
};

// e^x for float32 lanes within about 2 ulp: x = n·ln2 + r (two-part ln2, n·ln2_hi exact), a degree-7
// Taylor polynomial for e^r on |r| ≤ ln2/2 (truncation below 1e-8 relative), 2^n by scalef. Overflow
// gives inf, underflow 0, NaN stays NaN, as std::exp.
GPTOSS_AMX inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(88.8f), x));  // x second: NaN kept
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  constexpr float kInverseFactorials[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  __m512 p = _mm512_set1_ps(kInverseFactorials[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kInverseFactorials[i]));
  return _mm512_scalef_ps(p, n);
}

// swiglu of 16 (gate, up) pairs, in the order of operations of moe_mxfp4.cpp's scalar swiglu.
GPTOSS_AMX inline __m512 swiglu16(__m512 gate, __m512 up, float alpha, float limit) {
  const __m512 lim = _mm512_set1_ps(limit), one = _mm512_set1_ps(1.0f);
  const __m512 g = _mm512_min_ps(lim, gate);  // the input second: NaN stays NaN, as with torch.clamp
  const __m512 u = _mm512_max_ps(_mm512_set1_ps(-limit), _mm512_min_ps(lim, up));
  const __m512 sigmoid = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_mul_ps(_mm512_set1_ps(-alpha), g))));
  return _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), _mm512_add_ps(u, one));
}

inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }

// Phase 1's epilogue for a 32-row tile of gate/up products c ([32][m]: token t in column t) and bias
// b1 (its 32 entries): act[t·Iw + j0 + j] = bf16(swiglu(c[2j][t] + b1[2j], c[2j+1][t] + b1[2j+1])), the
// element-order copy of the act rows only (the AMX second product reads nothing else). 16 tokens at
// a time, transposed in registers so each token's 16 values are one store; bf16 rounding to nearest
// even (subnormals to zero, which the tile multiply would read as zero anyway). With weights in ggml's
// layout, value j goes to ggml_position(j0 + j) instead (one store per value).
GPTOSS_AMX inline void store_act(const float* c, int64_t m, const float* b1, float alpha, float limit, uint16_t* act,
                                 int64_t Iw, int64_t j0, bool ggml) {
  for (int64_t t0 = 0; t0 < m; t0 += 16) {
    const __mmask16 tokens = first_lanes(m - t0);
    __m512i v[16];
    for (int j = 0; j < 16; ++j) {
      const __m512 gate = _mm512_add_ps(_mm512_maskz_loadu_ps(tokens, c + 2 * j * m + t0), _mm512_set1_ps(b1[2 * j]));
      const __m512 up = _mm512_add_ps(_mm512_maskz_loadu_ps(tokens, c + (2 * j + 1) * m + t0), _mm512_set1_ps(b1[2 * j + 1]));
      v[j] = _mm512_castps_si512(swiglu16(gate, up, alpha, limit));
    }
    gemm_bf16::transpose16x16(v);  // v[t]: the 16 values of token t0 + t
    for (int64_t t = 0; t < std::min<int64_t>(16, m - t0); ++t) {
      const __m256i words = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_castsi512_ps(v[t])));
      uint16_t* row = act + (t0 + t) * Iw;
      if (!ggml) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + j0), words);
        continue;
      }
      alignas(32) uint16_t values[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(values), words);
      for (int j = 0; j < 16; ++j) row[ggml_position(j0 + j)] = values[j];
    }
  }
}

// Phase 2's epilogue for a 32-row tile of down products c ([32][m]) and bias b2 (its 32 entries):
// out_t[r] += w_t·(c[r][t] + b2[r]), with out_t = out + (order[t] / A)·D + r0, w_t = weights[order[t]].
GPTOSS_AMX inline void add_down(const float* c, int64_t m, const float* b2, const float* weights, const int64_t* order,
                                int64_t A, float* out, int64_t D) {
  for (int64_t t0 = 0; t0 < m; t0 += 16) {
    const __mmask16 tokens = first_lanes(m - t0);
    for (int h = 0; h < 2; ++h) {  // rows 16h .. 16h + 15
      __m512i v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_castps_si512(_mm512_maskz_loadu_ps(tokens, c + (16 * h + i) * m + t0));
      gemm_bf16::transpose16x16(v);
      const __m512 bias = _mm512_loadu_ps(b2 + 16 * h);
      for (int64_t t = 0; t < std::min<int64_t>(16, m - t0); ++t) {
        const int64_t pair = order[t0 + t];
        float* o = out + (pair / A) * D + 16 * h;
        const __m512 sum = _mm512_mul_ps(_mm512_set1_ps(weights[pair]), _mm512_add_ps(_mm512_castsi512_ps(v[t]), bias));
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), sum));
      }
    }
  }
}

}  // namespace moe_amx
}  // namespace gptoss

#endif
