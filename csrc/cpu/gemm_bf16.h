// bf16 matrix products with AVX-512 BF16 (vdpbf16ps) for many rows of x: the prompt-processing path
// of linear (bf16 weights) and of the MXFP4 experts (decoded to bf16).
//
// Layout (what vdpbf16ps wants): a panel of 32 weight rows is packed as [kp][32 rows] dwords, each
// dword the bf16 pair (W[r][2kp], W[r][2kp+1]); an x row stays in natural order, so the pair
// (x[2kp], x[2kp+1]) is one 32-bit broadcast. Per pair index kp a tile of 32 rows × TT x rows takes 2
// weight loads, TT broadcasts and 2·TT vdpbf16ps (64 exact products each, float32 sums), with the
// 2·TT accumulators in registers. Measured on the 2-core Zen 4 VM: ~95% of the instruction's peak
// from L1, where the dot-product form (a row of W against a row of x, horizontal sums at the end)
// stalled at ~40%.
#pragma once

#include "vec.h"

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
#include <algorithm>
#include <cstdint>

namespace gptoss {
namespace gemm_bf16 {

constexpr int kPanelRows = 32;  // weight rows per packed panel: two 16-lane accumulators per x row
constexpr int kMaxTokens = 12;  // x rows per register tile: 24 accumulators + 2 weights + 1 broadcast

// r[i] (16 dwords each) becomes column i of the 16×16 matrix whose rows were r[0..15].
GPTOSS_AVX512_BF16 inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4q + j] now holds, per 128-bit lane L, rows 4q..4q+3 of column 4L + j
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);       // lanes 0, 2 of both
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);   // lanes 1, 3 of both
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);            // columns j, lane 0
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);        // lane 2
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);   // lane 1
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);  // lane 3
  }
}

// out[kp·32 + r] = (W[r][2(kp0 + kp)], W[r][2(kp0 + kp) + 1]) for kp < kps, rows r < rows (≤ 32) of w
// (row stride ldw words, `in` words per row); missing rows and the word past an odd `in` are zero.
// Whole 16-row × 16-pair blocks inside the rows are transposed in registers, the rest one by one.
GPTOSS_AVX512_BF16 inline void pack_panel(const uint16_t* w, int64_t ldw, int64_t rows, int64_t in, int64_t kp0,
                                          int64_t kps, uint32_t* out) {
  const int64_t whole_pairs = std::max<int64_t>(0, std::min(kps, in / 2 - kp0)) / 16 * 16;
  for (int64_t h = 0; h < kPanelRows; h += 16) {
    const bool full = h + 16 <= rows;
    for (int64_t kp = 0; kp < (full ? whole_pairs : 0); kp += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(w + (h + i) * ldw + 2 * (kp0 + kp));
      transpose16x16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (kp + i) * kPanelRows + h, r[i]);
    }
    for (int64_t r = h; r < h + 16; ++r) {
      const uint16_t* row = w + r * ldw;
      for (int64_t kp = full ? whole_pairs : 0; kp < kps; ++kp) {
        const int64_t k = 2 * (kp0 + kp);
        out[kp * kPanelRows + r] =
            r < rows && k < in ? row[k] | (k + 1 < in ? static_cast<uint32_t>(row[k + 1]) << 16 : 0u) : 0u;
      }
    }
  }
}

// acc[t][r] += Σ_kp wp[kp][r] · x_t pair kp, for kps pairs, 32 rows and TT x rows (x[t] points at the
// first pair; rows of even length, so the last pair is inside the row). acc: [TT][32] floats.
template <int TT>
GPTOSS_AVX512_BF16 inline void tile(const uint32_t* wp, int64_t kps, const uint16_t* const* x, float* acc) {
  __m512 a[TT][2];
  for (int t = 0; t < TT; ++t) {
    a[t][0] = _mm512_loadu_ps(acc + t * kPanelRows);
    a[t][1] = _mm512_loadu_ps(acc + t * kPanelRows + 16);
  }
  for (int64_t kp = 0; kp < kps; ++kp) {
    const __m512i w0 = _mm512_loadu_si512(wp + kp * kPanelRows), w1 = _mm512_loadu_si512(wp + kp * kPanelRows + 16);
    for (int t = 0; t < TT; ++t) {
      int32_t pair;
      std::memcpy(&pair, x[t] + 2 * kp, sizeof(pair));
      const __m512i xb = _mm512_set1_epi32(pair);
      a[t][0] = _mm512_dpbf16_ps(a[t][0], (__m512bh)w0, (__m512bh)xb);
      a[t][1] = _mm512_dpbf16_ps(a[t][1], (__m512bh)w1, (__m512bh)xb);
    }
  }
  for (int t = 0; t < TT; ++t) {
    _mm512_storeu_ps(acc + t * kPanelRows, a[t][0]);
    _mm512_storeu_ps(acc + t * kPanelRows + 16, a[t][1]);
  }
}

// acc[t][r] += panel · x_t for m x rows, in register tiles of up to kMaxTokens rows.
GPTOSS_AVX512_BF16 inline void panel_times_rows(const uint32_t* wp, int64_t kps, const uint16_t* const* x, int64_t m,
                                                float* acc) {
  for (int64_t t0 = 0; t0 < m; t0 += kMaxTokens) {
    const uint16_t* const* xt = x + t0;
    float* at = acc + t0 * kPanelRows;
    switch (std::min<int64_t>(kMaxTokens, m - t0)) {
      case 1: tile<1>(wp, kps, xt, at); break;
      case 2: tile<2>(wp, kps, xt, at); break;
      case 3: tile<3>(wp, kps, xt, at); break;
      case 4: tile<4>(wp, kps, xt, at); break;
      case 5: tile<5>(wp, kps, xt, at); break;
      case 6: tile<6>(wp, kps, xt, at); break;
      case 7: tile<7>(wp, kps, xt, at); break;
      case 8: tile<8>(wp, kps, xt, at); break;
      case 9: tile<9>(wp, kps, xt, at); break;
      case 10: tile<10>(wp, kps, xt, at); break;
      case 11: tile<11>(wp, kps, xt, at); break;
      default: tile<12>(wp, kps, xt, at); break;
    }
  }
}

}  // namespace gemm_bf16
}  // namespace gptoss

#endif
