// AMX-BF16 building blocks for the many-token (prompt) paths of linear and moe_mxfp4.
//
// One tile multiply (TDPBF16PS) adds A·B to C: A is 16 rows × 32 bf16 values (64-byte rows), B the
// matching 32 values for 16 columns, stored as 16 rows of 16 bf16 pairs (row kp, column n holds
// values 2kp and 2kp + 1 of column n), C is 16 × 16 float32. Products of bf16 values are exact and
// summed in float32 (round to nearest even); as with vdpbf16ps, subnormal inputs count as zero. That
// is 8192 multiply-adds per instruction: on the 2-core Sapphire Rapids VM one core sustains about 20
// times what vdpbf16ps gives it.
//
// Weights are A (a weight row is a tile row), tokens are B. The tokens' values are packed once per op
// into "B panels": [token tile][K tile][16 pairs][16 tokens] dwords, 1 KB per (token tile, K tile).
// The kernel holds two A tiles (32 weight rows), two B tiles (32 tokens) and their four C tiles, so
// every tile load feeds two multiplies. Callers check amx_enabled() (vec.h) first.
#pragma once

#include "gemm_bf16.h"
#include "vec.h"

#if GPTOSS_HAVE_AMX_KERNELS
#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

namespace gptoss {
namespace amx {

constexpr int64_t kTileK = 32;                   // bf16 values per A-tile row
constexpr int64_t kTileTokens = 16;              // columns of B and C tiles
constexpr int64_t kBTileWords = 16 * kTileK;     // one B tile: 16 pair rows × 16 tokens × 2 values
constexpr int64_t kRows = 32;                    // weight rows per kernel call: two A tiles
constexpr int64_t kTokens = 2 * kTileTokens;     // tokens per kernel call: two B tiles

// Tile loads and stores want 64-byte aligned rows: a misaligned A tile took ~45% longer per multiply,
// misaligned A and B ~5x (2-core Sapphire Rapids VM). Every tile buffer is one of these.
template <typename T>
struct Aligned64Allocator {
  using value_type = T;
  Aligned64Allocator() = default;
  template <typename U>
  Aligned64Allocator(const Aligned64Allocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned64Allocator&) const { return true; }
  bool operator!=(const Aligned64Allocator&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, Aligned64Allocator<T>>;

// Tile registers: C 0-3 (C[i][t] = 2i + t), A 4-5 (rows 16i..), B 6-7 (tokens 16t..). All 16 × 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
constexpr TileConfig full_tiles() {
  TileConfig config{1, 0, {}, {}, {}};
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  return config;
}
// A constant in memory: GCC 12 drops the stores that build a configuration on the stack, as if
// ldtilecfg did not read it.
alignas(64) inline constexpr TileConfig kFullTiles = full_tiles();

// Configures the calling thread's tiles on first use and releases them when it goes (the tile state
// is per thread; an op's parallel task owns one).
class TileScope {
 public:
  GPTOSS_AMX void ensure() {
    if (configured_) return;
    _tile_loadconfig(&kFullTiles);
    configured_ = true;
  }
  GPTOSS_AMX ~TileScope() {
    if (configured_) _tile_release();
  }

 private:
  bool configured_ = false;
};

// Packs `tokens` tokens into B panels (k_tiles K tiles each): fetch(n, j) returns the 16 dwords of
// token n for K tile j (pair kp in dword kp). Missing tokens of the last tile are zeros.
template <typename Fetch>
GPTOSS_AMX inline void pack_b(int64_t tokens, int64_t k_tiles, Fetch&& fetch, uint16_t* out) {
  for (int64_t tt = 0; tt * kTileTokens < tokens; ++tt) {
    const int64_t n_here = std::min<int64_t>(kTileTokens, tokens - tt * kTileTokens);
    for (int64_t j = 0; j < k_tiles; ++j) {
      __m512i r[16];
      for (int64_t n = 0; n < 16; ++n) r[n] = n < n_here ? fetch(tt * kTileTokens + n, j) : _mm512_setzero_si512();
      gemm_bf16::transpose16x16(r);  // r[kp] = pair kp of the 16 tokens
      uint16_t* tile = out + (tt * k_tiles + j) * kBTileWords;
      for (int kp = 0; kp < 16; ++kp) _mm512_storeu_si512(tile + kp * kTileK, r[kp]);
    }
  }
}

constexpr int64_t kATileWords = kRows * kTileK;  // one K tile of 32 rows: [32 rows][32 values]

// A tiles of a 32-row tile (rows < n of w, the rest zero; values ≥ in zero), K tile after K tile:
// out[j·kATileWords + r·32 + s] = w[r][32j + s]. In place, a bf16 weight matrix is rarely 64-byte
// aligned (safetensors aligns tensors to 8 bytes).
GPTOSS_AMX inline void pack_a(const uint16_t* w, int64_t ldw, int64_t n, int64_t in, int64_t k_tiles, uint16_t* out) {
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t j = 0; j < k_tiles; ++j) {
      const int64_t left = r < n ? std::min<int64_t>(kTileK, in - j * kTileK) : 0;
      const __mmask32 mask = left >= kTileK ? ~__mmask32(0) : (__mmask32(1) << left) - 1;
      _mm512_store_si512(out + j * kATileWords + r * kTileK, _mm512_maskz_loadu_epi16(mask, w + r * ldw + j * kTileK));
    }
  }
}

// c[r][t] (row stride ldc floats) = Σ_j A_j[r]·B_j[t] for 32 weight rows and 16·TT tokens over k_tiles
// K tiles. A tile i of K tile j is at a + j·a_step + i·a_half (bytes), rows lda bytes apart; B tile t
// of K tile j at b + t·b_stride + j·1 KB.
template <int TT>
GPTOSS_AMX inline void rows_times_tokens(const char* a, int64_t lda, int64_t a_step, int64_t a_half, const char* b,
                                         int64_t b_stride, int64_t k_tiles, float* c, int64_t ldc) {
  static_assert(TT == 1 || TT == 2, "one or two token tiles");
  constexpr int64_t kBTileBytes = kBTileWords * 2;
  _tile_zero(0);
  _tile_zero(2);
  if (TT == 2) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int64_t j = 0; j < k_tiles; ++j) {  // each multiply issued as soon as its operands are loaded
    _tile_loadd(4, a + j * a_step, lda);
    _tile_loadd(6, b + j * kBTileBytes, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (TT == 2) {
      _tile_loadd(7, b + b_stride + j * kBTileBytes, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    _tile_loadd(5, a + j * a_step + a_half, lda);
    _tile_dpbf16ps(2, 5, 6);
    if (TT == 2) _tile_dpbf16ps(3, 5, 7);
  }
  const int64_t ldc_bytes = ldc * static_cast<int64_t>(sizeof(float));
  _tile_stored(0, c, ldc_bytes);
  _tile_stored(2, c + 16 * ldc, ldc_bytes);
  if (TT == 2) {
    _tile_stored(1, c + 16, ldc_bytes);
    _tile_stored(3, c + 16 * ldc + 16, ldc_bytes);
  }
}

// The same for any token count: full pairs of token tiles, then a single one. c: [32][ldc ≥ tokens
// rounded up to 16] floats.
GPTOSS_AMX inline void rows_times_all_tokens(const char* a, int64_t lda, int64_t a_step, int64_t a_half,
                                             const uint16_t* b, int64_t tokens, int64_t k_tiles, float* c,
                                             int64_t ldc) {
  const int64_t tiles = (tokens + kTileTokens - 1) / kTileTokens, b_stride = k_tiles * kBTileWords * 2;
  const char* bb = reinterpret_cast<const char*>(b);
  int64_t t = 0;
  for (; t + 2 <= tiles; t += 2)
    rows_times_tokens<2>(a, lda, a_step, a_half, bb + t * b_stride, b_stride, k_tiles, c + t * kTileTokens, ldc);
  if (t < tiles) rows_times_tokens<1>(a, lda, a_step, a_half, bb + t * b_stride, b_stride, k_tiles, c + t * kTileTokens, ldc);
}

}  // namespace amx
}  // namespace gptoss

#endif
