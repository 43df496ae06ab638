// Mixture of MXFP4 experts on CPU, computed straight from the packed blocks and scales.
//
// out[n] = Σ_a w[n,a]·(W2[e]·act + b2[e]),  act = swiglu(W1[e]·x[n] + b1[e]) rounded to x's dtype,  e = ids[n,a].
// float32 accumulation throughout; unlike the reference, the two products are not rounded to bf16.
//
// Structure (the same for one token and for many):
//  1. The (token, slot) pairs are grouped by expert (a counting sort: deterministic order). x is copied
//     once into float32 rows in the "chunk layout" below.
//  2. Phase 1: every thread owns a range of W1 row tiles (16 rows = 8 gate/up pairs) and, expert by
//     expert, multiplies its tiles by all the tokens routed to that expert; SwiGLU is applied as soon
//     as a tile is complete and act is written, in the chunk layout too, to a [pairs, I] buffer.
//  3. Phase 2: the same over W2 row tiles; a thread owns output columns [r0, r1) of every token and
//     adds w·(y + b2) expert by expert in ascending order, so each output element is summed in one
//     fixed order whatever the number of threads (bitwise determinism).
// A tile's product with its expert's m tokens takes one of two paths (chosen by m alone):
//  - m < kGemmMinTokens (decode; memory-bound): each row is decoded in registers, 64 values at a
//    time, and applied to all m tokens at once (row_dot); rows are streamed once.
//  - m >= kGemmMinTokens (prefill; compute-bound): the tile is decoded one K-step at a time (16 rows
//    × 256 values, 16 KB of float32: L1) and that buffer is shared by all m tokens through a
//    4-row × 3-token register-blocked kernel (gemm_4xt); the next tile is prefetched meanwhile.
// No dequantised copy of a weight matrix is ever made: the largest decoded piece is one tile's K-step
// per thread (16 KB here; 32 rows × 3072 bf16 values, 192 KB of L2, in the AVX-512 BF16 path).
//
// AVX2 decoding of one 32-byte chunk (two MXFP4 blocks, block b in the low 128-bit lane, b+1 in the
// high lane): the low/high nibbles index two pshufb tables that give the high and low byte of the
// value's bfloat16 encoding (FP4 E2M1 values are exact in bf16); interleaving them yields bf16 words,
// and a word pair of a 32-bit lane becomes two float32 vectors with `<< 16` and `& 0xFFFF0000`. The
// resulting element order inside a chunk is fixed (see chunk_position), so x and act are stored in
// that order once instead of shuffling the weights. The block scale 2^(s-127) is built from the
// exponent bits; row_dot forms Σ value·x per block first and multiplies by it, the buffered path
// stores value·2^(s-127) (exact). The two paths round differently (both within float32 accuracy),
// so a token's output can change in the last bits with the number of tokens sharing its experts,
// never with the thread count. Without AVX2 a scalar fallback (natural order, row_dot only) is used.
//
// With bf16 inputs on CPUs with AVX-512 BF16 the same structure runs on the kernels of
// moe_mxfp4_bf16.h (FP4 decoded straight to bf16, vdpbf16ps: 32 exact products per instruction).
// Its few-token kernel reads 4 tiles of a thread's range in lockstep, one memory stream each
// (for_tile_groups). On AMX CPUs, experts with kAmxMinTokens or more tokens take tile multiplies
// instead (moe_mxfp4_amx.h; vectorised SwiGLU and down-projection epilogues). GPTOSS_CPU_ISA=avx2
// or avx512_bf16 caps the family. The Path structs below are the three sets; each supplies its tile
// products and its epilogues (ScalarEpilogue unless it has vector ones).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../check.h"
#include "../mxfp4.h"
#include "gemm_bf16.h"
#include "moe_mxfp4_amx.h"
#include "moe_mxfp4_bf16.h"
#include "vec.h"

namespace gptoss {
namespace {

constexpr int64_t kChunk = 2 * kMxfp4Block;  // values per decoding step: two blocks
constexpr int kMaxGroup = 4;                  // tokens sharing one decoded weight row
constexpr int64_t kRowTile = 16;              // rows per work item; even, so gate/up pairs stay together
constexpr int64_t kGemmMinTokens = 4;         // from this many tokens per expert: decoded K-step buffer + GEMM
constexpr int64_t kGemmStepBlocks = 8;        // K-step of the buffered path: 16 rows × 256 floats = 16 KB
#if GPTOSS_AVX2
constexpr int kLanes = 8;  // accumulator width of one (row, token) dot product
#else
constexpr int kLanes = 1;
#endif

int64_t padded(int64_t k) { return (k + kChunk - 1) / kChunk * kChunk; }

// Where value c (0..63) of a chunk is stored in the chunk layout. The AVX2 decoder's output vector v
// (0..7) holds, in lane 4h + l, element kBase[v] + 4l of the chunk's block h (see Fp4Decoder).
int chunk_position(int c) {
#if GPTOSS_AVX2
  static const int kBase[8] = {0, 2, 16, 18, 1, 3, 17, 19};
  const int h = c / kMxfp4Block, e = c % kMxfp4Block;
  for (int v = 0; v < 8; ++v) {
    const int d = e - kBase[v];
    if (d >= 0 && d < 16 && d % 4 == 0) return v * 8 + h * 4 + d / 4;
  }
  TORCH_INTERNAL_ASSERT(false, "no decoder lane for element ", e);
#else
  return c;
#endif
}

struct ChunkLayout {
  int pos[kChunk];
  explicit ChunkLayout(int (*position)(int)) {
    for (int c = 0; c < kChunk; ++c) pos[c] = position(c);
  }
};
const ChunkLayout& layout() {
  static const ChunkLayout l(chunk_position);
  return l;
}

// One expert-stacked MXFP4 matrix of `rows` rows of nb blocks per expert, in either layout (mxfp4.h):
// the Hugging Face one (blocks [E, rows, nb, 16], scales [E, rows, nb]) or ggml's ([E, rows, nb, 17],
// `scales` pointing at the first scale byte and `blocks` one byte after it). When `odd_blocks` is set,
// the odd rows come from a second matrix of the same layout (ggml's up rows beside its gate rows: row
// 2i is gate row i, row 2i + 1 up row i, as in the interleaved Hugging Face gate_up).
struct Mxfp4Matrix {
  const uint8_t* blocks;
  const uint8_t* scales;
  int64_t rows, nb;
  Mxfp4Strides stride = kHfStrides;
  const uint8_t* odd_blocks = nullptr;
  const uint8_t* odd_scales = nullptr;

  // (matrix, row within it) of logical row r of expert e
  int64_t stored_row(int64_t e, int64_t r) const { return odd_blocks ? e * (rows / 2) + r / 2 : e * rows + r; }
  bool from_odd(int64_t r) const { return odd_blocks && (r & 1); }
  const uint8_t* row_blocks(int64_t e, int64_t r) const {
    return (from_odd(r) ? odd_blocks : blocks) + stored_row(e, r) * nb * stride.block;
  }
  const uint8_t* row_scales(int64_t e, int64_t r) const {
    return (from_odd(r) ? odd_scales : scales) + stored_row(e, r) * nb * stride.scale;
  }
  bool ggml() const { return stride.block != kMxfp4BlockBytes; }

  // f(r) for rows [r0, r1) (r0 even) in memory order: with the odd rows apart, the even ones first, so
  // that each matrix is read at one stride (which the hardware prefetcher follows).
  template <typename F>
  void for_rows(int64_t r0, int64_t r1, F&& f) const {
    const int64_t step = odd_blocks ? 2 : 1;
    for (int64_t first = r0; first < r0 + step; ++first)
      for (int64_t r = first; r < r1; r += step) f(r);
  }
};

// Calls f(HfBlocks{}) or f(GgmlBlocks{}): w's layout as a type, for the kernels' compile-time strides.
template <typename F>
inline void with_layout(const Mxfp4Matrix& w, F&& f) {
  if (w.ggml())
    f(GgmlBlocks{});
  else
    f(HfBlocks{});
}

#if GPTOSS_AVX2

// Decodes 32-byte chunks (two blocks) into 8 float32 vectors of FP4 values (unscaled), in the order
// of chunk_position.
struct Fp4Decoder {
  // High and low byte of the bf16 encoding of each FP4 value, by nibble (both 128-bit lanes).
  const __m256i table_hi = _mm256_setr_epi8(
      0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF), char(0xBF), char(0xBF), char(0xC0),
      char(0xC0), char(0xC0), char(0xC0), 0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF),
      char(0xBF), char(0xBF), char(0xC0), char(0xC0), char(0xC0), char(0xC0));
  const __m256i table_lo = _mm256_setr_epi8(
      0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00, char(0x80), char(0xC0),
      0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0),
      0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0));
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i top_half = _mm256_set1_epi32(int32_t(0xFFFF0000u));

  // The chunk at q (blocks L::kBlock bytes apart): both blocks, or (last block of an odd row) one
  // block and zeros.
  template <typename L>
  static __m256i load(const uint8_t* q, bool two_blocks) {
    if (!two_blocks) return _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    if constexpr (L::kBlock == kMxfp4BlockBytes) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + L::kBlock)),
                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  }

  // Calls use(v, values) for v = 0..7 in this order; values holds element kBase[v] + 4l of block h
  // in lane 4h + l (kBase in chunk_position).
  template <typename Use>
  inline void operator()(__m256i v, Use&& use) const {
    const __m256i lo = _mm256_and_si256(v, nibble);                          // elements 2j
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);   // elements 2j + 1
    half(lo, 0, use);
    half(hi, 4, use);
  }

 private:
  template <typename Use>
  inline void half(__m256i idx, int k0, Use&& use) const {
    const __m256i bh = _mm256_shuffle_epi8(table_hi, idx), bl = _mm256_shuffle_epi8(table_lo, idx);
    const __m256i w0 = _mm256_unpacklo_epi8(bl, bh), w1 = _mm256_unpackhi_epi8(bl, bh);  // bf16 words
    use(k0 + 0, _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)));
    use(k0 + 1, _mm256_castsi256_ps(_mm256_and_si256(w0, top_half)));
    use(k0 + 2, _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)));
    use(k0 + 3, _mm256_castsi256_ps(_mm256_and_si256(w1, top_half)));
  }
};

// 2^(s-127) of up to 8 consecutive blocks, from the exponent bits s << 23; s = 0 is the subnormal
// 2^-127 (the max picks its bit pattern), 255 gives inf. Missing blocks get 2^-127.
inline __m256 block_multipliers(const uint8_t* sc, int64_t n) {
  __m128i bytes;
  if (n >= 8) {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc));
  } else {
    uint64_t tmp = 0;
    memcpy(&tmp, sc, n);
    bytes = _mm_cvtsi64_si128(static_cast<int64_t>(tmp));
  }
  return _mm256_castsi256_ps(
      _mm256_max_epi32(_mm256_slli_epi32(_mm256_cvtepu8_epi32(bytes), 23), _mm256_set1_epi32(0x00400000)));
}

// The multiplier of blocks c and c + 1 (c even, < 8) in the low / high four lanes.
inline __m256 pair_multiplier(__m256 mult, int64_t c) {
  alignas(32) static const int32_t kIndex[4][8] = {
      {0, 0, 0, 0, 1, 1, 1, 1}, {2, 2, 2, 2, 3, 3, 3, 3}, {4, 4, 4, 4, 5, 5, 5, 5}, {6, 6, 6, 6, 7, 7, 7, 7}};
  return _mm256_permutevar8x32_ps(mult, _mm256_load_si256(reinterpret_cast<const __m256i*>(kIndex[c / 2])));
}

// The same for ggml's blocks, from the scale bytes beside them (block b, and b + 1 if there is one): a
// scalar read of bytes the chunk's own loads bring in, where gathering eight scales at a stride would
// wait on three cache lines at once.
inline __m256 pair_multiplier_beside(const uint8_t* sc, int64_t b, int64_t stride, bool two_blocks) {
  const int32_t lo = std::max<int32_t>(int32_t{sc[b * stride]} << 23, 0x00400000);
  const int32_t hi = two_blocks ? std::max<int32_t>(int32_t{sc[(b + 1) * stride]} << 23, 0x00400000) : 0x00400000;
  return _mm256_castsi256_ps(_mm256_set_m128i(_mm_set1_epi32(hi), _mm_set1_epi32(lo)));
}

// Calls chunk(b, multipliers of b and b + 1, whether b + 1 exists) for the chunks of blocks [b0, b1), b0 even.
template <typename L, typename Chunk>
inline void for_chunks(const uint8_t* sc, int64_t b0, int64_t b1, Chunk&& chunk) {
  for (int64_t b = b0; b < b1; b += 8) {
    const int64_t n = std::min<int64_t>(8, b1 - b);
    if constexpr (L::kScale == 1) {
      const __m256 mult = block_multipliers(sc + b, n);
      for (int64_t c = 0; c < n; c += 2) chunk(b + c, pair_multiplier(mult, c), c + 1 < n);
    } else {
      for (int64_t c = 0; c < n; c += 2) chunk(b + c, pair_multiplier_beside(sc, b + c, L::kScale, c + 1 < n), c + 1 < n);
    }
  }
}

// Few tokens (decode): acc[t] (8 lanes, in memory) += Σ over blocks [b0, b1) of the row of
// (Σ_block value·x_t)·2^(s-127). The weights never leave registers. b0 is even; x[t] is token t's
// row in the chunk layout (zero padded to whole chunks).
template <int MT, typename L>
inline void row_dot(const uint8_t* blk, const uint8_t* sc, int64_t b0, int64_t b1, const float* const* x, float* accp) {
  const Fp4Decoder decode;
  __m256 acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm256_loadu_ps(accp + t * 8);
  for_chunks<L>(sc, b0, b1, [&](int64_t b, __m256 s, bool two_blocks) {
    const int64_t off = b * kMxfp4Block;
    __m256 p[2][MT];  // two chains per token: even and odd output vectors
    decode(Fp4Decoder::load<L>(blk + b * L::kBlock, two_blocks), [&](int k, __m256 f) {
      for (int t = 0; t < MT; ++t) {
        const __m256 xv = _mm256_loadu_ps(x[t] + off + 8 * k);
        p[k & 1][t] = k < 2 ? _mm256_mul_ps(f, xv) : _mm256_fmadd_ps(f, xv, p[k & 1][t]);
      }
    });
    for (int t = 0; t < MT; ++t) acc[t] = _mm256_fmadd_ps(_mm256_add_ps(p[0][t], p[1][t]), s, acc[t]);
  });
  for (int t = 0; t < MT; ++t) _mm256_storeu_ps(accp + t * 8, acc[t]);
}

inline float lanes_sum(const float* acc) { return hsum(_mm256_loadu_ps(acc)); }

// Many tokens (prefill): blocks [b0, b1) of one row, scaled, as float32 in the chunk layout.
template <typename L>
inline void decode_row(const uint8_t* blk, const uint8_t* sc, int64_t b0, int64_t b1, float* out) {
  const Fp4Decoder decode;
  for_chunks<L>(sc, b0, b1, [&](int64_t b, __m256 s, bool two_blocks) {
    float* o = out + (b - b0) * kMxfp4Block;
    decode(Fp4Decoder::load<L>(blk + b * L::kBlock, two_blocks),
           [&](int k, __m256 f) { _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(f, s)); });
  });
}

// acc[r][t] (8 lanes each, row stride acc_stride) += w_r · x_t over kc values: 4 rows × TT tokens in
// registers, 12 multiply-adds per 7 loads at TT = 3. Kept out of line: inlined into tile_product_gemm,
// GCC 12 compiled the caller ~10% slower (prefill of a 20b layer, 64 tokens).
template <int TT>
__attribute__((noinline)) void gemm_4xt(const float* w, int64_t ws, const float* const* x, int64_t koff, int64_t kc, float* acc,
                     int64_t acc_stride) {
  __m256 a[4][TT];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < TT; ++t) a[r][t] = _mm256_loadu_ps(acc + r * acc_stride + t * 8);
  const float* xt[TT];
  for (int t = 0; t < TT; ++t) xt[t] = x[t] + koff;
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(xt[t] + k);
    for (int r = 0; r < 4; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * ws + k);
      for (int t = 0; t < TT; ++t) a[r][t] = _mm256_fmadd_ps(wv, xv[t], a[r][t]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < TT; ++t) _mm256_storeu_ps(acc + r * acc_stride + t * 8, a[r][t]);
}

// Per-thread scratch of the buffered path.
struct GemmScratch {
  std::vector<float> weights;  // [kRowTile, kGemmStepBlocks·32]: one decoded K-step of the tile
  std::vector<float> acc;      // [kRowTile, m, 8]
};

// Share `step` of `steps` of the bytes [start, start + bytes), into L2.
inline void prefetch_share(const uint8_t* start, int64_t bytes, int64_t step, int64_t steps) {
  const int64_t share = (bytes + steps - 1) / steps;
  for (int64_t i = step * share; i < std::min(bytes, (step + 1) * share); i += 64)
    prefetch_l2(start + i);
}

// Rows are read in K-step slices, a pattern the hardware prefetcher does not follow: fetches the next
// tile (the `rows` rows from r1, an even row) into L2, a share of it per K-step: its blocks and its
// scales (Hugging Face layout), its rows (ggml), or its gate rows and its up rows (ggml, up apart).
inline void prefetch_next_tile(const Mxfp4Matrix& w, int64_t e, int64_t r1, int64_t rows, int64_t step, int64_t steps) {
  if (r1 + rows > w.rows) return;
  if (!w.ggml()) {
    prefetch_share(w.row_blocks(e, r1), rows * w.nb * kMxfp4BlockBytes, step, steps);
    prefetch_share(w.row_scales(e, r1), rows * w.nb, step, steps);
  } else if (w.odd_blocks) {
    prefetch_share(w.row_scales(e, r1), rows / 2 * w.nb * w.stride.block, step, steps);
    prefetch_share(w.row_scales(e, r1 + 1), rows / 2 * w.nb * w.stride.block, step, steps);
  } else {
    prefetch_share(w.row_scales(e, r1), rows * w.nb * w.stride.block, step, steps);
  }
}

// c[(r - r0)·m + t] = W[e][r]·x_t, rows [r0, r1) (r1 - r0 = kRowTile), m ≥ 1 tokens: each K-step of the
// tile is decoded once into an L1-sized float32 buffer and reused by every token.
void tile_product_gemm(const Mxfp4Matrix& w, int64_t e, int64_t r0, int64_t r1, const float* const* x, int64_t m,
                       float* c, GemmScratch& s) {
  const int64_t rows = r1 - r0, nb = w.nb, kc_max = kGemmStepBlocks * kMxfp4Block;
  s.weights.resize(kRowTile * kc_max);
  s.acc.assign(rows * m * 8, 0.0f);
  for (int64_t k0 = 0; k0 < nb; k0 += kGemmStepBlocks) {
    const int64_t k1 = std::min(nb, k0 + kGemmStepBlocks);
    const int64_t kc = (k1 - k0 + 1) / 2 * kChunk;  // whole chunks: a lone last block is zero padded
    prefetch_next_tile(w, e, r1, rows, k0 / kGemmStepBlocks, (nb + kGemmStepBlocks - 1) / kGemmStepBlocks);
    with_layout(w, [&](auto layout) {
      w.for_rows(r0, r1, [&](int64_t r) {
        decode_row<decltype(layout)>(w.row_blocks(e, r), w.row_scales(e, r), k0, k1, s.weights.data() + (r - r0) * kc_max);
      });
    });
    const int64_t koff = k0 * kMxfp4Block;
    for (int64_t t0 = 0; t0 < m; t0 += 3) {
      for (int64_t rg = 0; rg < rows; rg += 4) {
        const float* wp = s.weights.data() + rg * kc_max;
        float* ap = s.acc.data() + (rg * m + t0) * 8;
        switch (std::min<int64_t>(3, m - t0)) {
          case 1: gemm_4xt<1>(wp, kc_max, x + t0, koff, kc, ap, m * 8); break;
          case 2: gemm_4xt<2>(wp, kc_max, x + t0, koff, kc, ap, m * 8); break;
          default: gemm_4xt<3>(wp, kc_max, x + t0, koff, kc, ap, m * 8); break;
        }
      }
    }
  }
  for (int64_t i = 0; i < rows * m; ++i) c[i] = lanes_sum(s.acc.data() + i * 8);
}

#else  // portable scalar fallback: natural element order, one float accumulator per (row, token)

template <int MT, typename L>
inline void row_dot(const uint8_t* blk, const uint8_t* sc, int64_t b0, int64_t b1, const float* const* x, float* accp) {
  float values[16];
  for (int i = 0; i < 16; ++i) values[i] = fp4_value(static_cast<uint8_t>(i));
  for (int64_t b = b0; b < b1; ++b) {
    const float m = e8m0_multiplier(sc[b * L::kScale]);
    const uint8_t* q = blk + b * L::kBlock;
    for (int t = 0; t < MT; ++t) {
      const float* xb = x[t] + b * kMxfp4Block;
      float p = 0.0f;
      for (int j = 0; j < kMxfp4BlockBytes; ++j) {
        p += values[q[j] & 0x0F] * xb[2 * j];
        p += values[q[j] >> 4] * xb[2 * j + 1];
      }
      accp[t] += p * m;
    }
  }
}

inline float lanes_sum(const float* acc) { return acc[0]; }

struct GemmScratch {};

#endif

// c[(r - r0)·m + t] = W[e][r]·x_t for rows [r0, r1) and tokens t0 .. t0 + MT, weights decoded in
// registers once for the MT tokens. acc: (r1 - r0)·MT·kLanes floats.
template <int MT>
void group_product(const Mxfp4Matrix& w, int64_t e, int64_t r0, int64_t r1, const float* const* x, int64_t m,
                   int64_t t0, float* c, float* acc) {
  const int64_t rows = r1 - r0;
  std::fill(acc, acc + rows * MT * kLanes, 0.0f);
  with_layout(w, [&](auto layout) {
    w.for_rows(r0, r1, [&](int64_t r) {
      row_dot<MT, decltype(layout)>(w.row_blocks(e, r), w.row_scales(e, r), 0, w.nb, x + t0, acc + (r - r0) * MT * kLanes);
    });
  });
  for (int64_t r = 0; r < rows; ++r)
    for (int t = 0; t < MT; ++t) c[r * m + t0 + t] = lanes_sum(acc + (r * MT + t) * kLanes);
}

// What every path does with a tile's products c[(r - r0)·m + t] (m tokens of one expert), element by
// element. Phase 1: act row t gets value r/2 = swiglu(gate r, up r + 1), rounded to bf16 when the
// compute dtype is (act: m rows of Iw values, Path::put's layout of width Ip). Phase 2: output row
// n = order[t] / A gets weights[order[t]]·(c + b2) added for rows [r0, r1).
struct Epilogue {
  float alpha, limit;
  bool act_bf16;
  const float* weights;  // [N·A], by pair
  int64_t A;
  bool ggml;  // the weights are in ggml's layout: act element j is stored at ggml_position(j)
};

inline int64_t input_position(int64_t i, bool ggml) { return ggml ? ggml_position(i) : i; }

inline float swiglu(float gate, float up, float alpha, float limit) {
  const float g = std::min(gate, limit);  // NaN stays NaN, as with torch.clamp
  const float u = std::max(std::min(up, limit), -limit);
  return g * (1.0f / (1.0f + std::exp(-(alpha * g)))) * (u + 1.0f);
}

template <typename Path>
struct ScalarEpilogue {
  template <typename Value>
  static void store_act(const Epilogue& ep, const float* c, int64_t m, int64_t r0, int64_t r1, const float* b1,
                        Value* act, int64_t Iw, int64_t Ip) {
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t r = r0; r < r1; r += 2) {
        float v = swiglu(c[(r - r0) * m + t] + b1[r], c[(r + 1 - r0) * m + t] + b1[r + 1], ep.alpha, ep.limit);
        if (ep.act_bf16) v = static_cast<float>(c10::BFloat16(v));
        Path::put(act + t * Iw, Ip, input_position(r / 2, ep.ggml), v);
      }
    }
  }

  static void add_down(const Epilogue& ep, const float* c, int64_t m, int64_t r0, int64_t r1, const float* b2,
                       const int64_t* order, float* out, int64_t D) {
    for (int64_t t = 0; t < m; ++t) {
      const float w = ep.weights[order[t]];
      float* o = out + (order[t] / ep.A) * D;
      for (int64_t r = r0; r < r1; ++r) o[r] += w * (c[(r - r0) * m + t] + b2[r]);
    }
  }
};

// The float32 path (AVX2, or the scalar fallback): input rows of float32 in the chunk layout.
struct FloatPath : ScalarEpilogue<FloatPath> {
  using Value = float;
  static constexpr int64_t kTileRows = kRowTile;
  static constexpr int64_t kCopies = 1;  // rows per input row (see put)
  static int64_t padded_width(int64_t k) { return padded(k); }

  // Stores element i (value v) of an input row whose chunks span `width` values.
  static void put(float* row, int64_t width, int64_t i, float v) {
    (void)width;
    row[i / kChunk * kChunk + layout().pos[i % kChunk]] = v;
  }

  struct Scratch {
    std::vector<float> acc = std::vector<float>(kRowTile * kMaxGroup * kLanes);
    GemmScratch gemm;
  };

  // Called once per expert and phase, before its tiles, with its m input rows of k values.
  static void begin_expert(const float* const* /*x*/, int64_t /*m*/, int64_t /*k*/, Scratch& /*s*/) {}

  static int lockstep_tiles(int64_t /*m*/) { return 1; }
  static void tiles_product(const Mxfp4Matrix& w, int64_t e, const int64_t* r0, int count, const float* const* x,
                            int64_t m, float* const* c, Scratch& s) {
    for (int k = 0; k < count; ++k) tile_product(w, e, r0[k], std::min(w.rows, r0[k] + kTileRows), x, m, c[k], s);
  }

  // c[(r - r0)·m + t] = W[e][r]·x_t for the tile's rows and the m tokens routed to expert e: in
  // registers for a few tokens, through a decoded K-step buffer for more (AVX2 builds).
  static void tile_product(const Mxfp4Matrix& w, int64_t e, int64_t r0, int64_t r1, const float* const* x, int64_t m,
                           float* c, Scratch& s) {
#if GPTOSS_AVX2
    if (m >= kGemmMinTokens) return tile_product_gemm(w, e, r0, r1, x, m, c, s.gemm);
#endif
    for (int64_t t0 = 0; t0 < m; t0 += kMaxGroup) {
      switch (std::min<int64_t>(kMaxGroup, m - t0)) {
        case 1: group_product<1>(w, e, r0, r1, x, m, t0, c, s.acc.data()); break;
        case 2: group_product<2>(w, e, r0, r1, x, m, t0, c, s.acc.data()); break;
        case 3: group_product<3>(w, e, r0, r1, x, m, t0, c, s.acc.data()); break;
        default: group_product<4>(w, e, r0, r1, x, m, t0, c, s.acc.data()); break;
      }
    }
  }
};

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
// The bf16 path (inputs that are bf16 values, AVX-512 BF16 CPUs): each input row is held twice as bf16
// words, in element order for gemm_bf16.h (many tokens) and in the decode layout for
// moe_mxfp4_bf16.h's rows_dot (few tokens).
struct Bf16Path : ScalarEpilogue<Bf16Path> {
  using Value = uint16_t;
  static constexpr int64_t kTileRows = gemm_bf16::kPanelRows;
  static constexpr int64_t kStepBlocks = 96;  // K-step: 32 rows × 3072 values (all of gpt-oss's 2880): L2
  static constexpr int64_t kCopies = 2;       // element order for the GEMM, then the decode layout for rows_dot
  static int64_t padded_width(int64_t k) { return (k + moe_bf16::kQuad - 1) / moe_bf16::kQuad * moe_bf16::kQuad; }

  static void put(uint16_t* row, int64_t width, int64_t i, float v) {  // v is already a bf16 value
    static const struct QuadLayout {
      int pos[moe_bf16::kQuad];
      QuadLayout() {
        for (int c = 0; c < moe_bf16::kQuad; ++c) pos[c] = moe_bf16::quad_position(c);
      }
    } decode_layout;
    const uint16_t bits = c10::BFloat16(v).x;
    row[i] = bits;
    row[width + i / moe_bf16::kQuad * moe_bf16::kQuad + decode_layout.pos[i % moe_bf16::kQuad]] = bits;
  }

  struct Scratch {
    std::vector<uint16_t> rows;     // [kTileRows, kStepBlocks·32]: one decoded, scaled K-step of the tile
    std::vector<uint32_t> packed;   // the same as a gemm_bf16 panel
    std::vector<float> acc;         // [m, kTileRows]
    std::vector<const uint16_t*> x; // the tokens' rows at the K-step
  };

  static void begin_expert(const uint16_t* const* /*x*/, int64_t /*m*/, int64_t /*k*/, Scratch& /*s*/) {}

  // Few tokens: the in-register kernel reads kStreams tiles in lockstep, a row of each at a time (one
  // memory stream per tile: more streams in flight read more of the bandwidth, as in linear.cpp).
  static constexpr int kStreams = 4;
  static int lockstep_tiles(int64_t m) { return m < kGemmMinTokens ? kStreams : 1; }

  // c[k][(r - r0[k])·m + t] = W[e][r]·x_t for the count ≤ lockstep_tiles(m) tiles of kTileRows rows
  // from rows r0[k].
  GPTOSS_AVX512_BF16 static void tiles_product(const Mxfp4Matrix& w, int64_t e, const int64_t* r0, int count,
                                               const uint16_t* const* x, int64_t m, float* const* c, Scratch& s) {
    if (m >= kGemmMinTokens) {
      for (int k = 0; k < count; ++k) tile_product_gemm(w, e, r0[k], r0[k] + kTileRows, x, m, c[k], s);
      return;
    }
    const int64_t width = padded_width(w.nb * kMxfp4Block);  // where each row's decode-layout copy starts
    float spare[3];  // the output of a stream without a tile (it re-reads stream 0's rows)
    for (int64_t t0 = 0; t0 < m; t0 += 3) {
      const int64_t mt = std::min<int64_t>(3, m - t0);
      const uint16_t* xd[3] = {};
      for (int64_t t = 0; t < mt; ++t) xd[t] = x[t0 + t] + width;
      for (int64_t i = 0; i < kTileRows; ++i) {
        const uint8_t *blk[kStreams], *sc[kStreams];
        float* out[kStreams];
        for (int k = 0; k < kStreams; ++k) {
          const int64_t r = (k < count ? r0[k] : r0[0]) + i;
          blk[k] = w.row_blocks(e, r);
          sc[k] = w.row_scales(e, r);
          out[k] = k < count ? c[k] + i * m + t0 : spare;
        }
        with_layout(w, [&](auto layout) {
          using L = decltype(layout);
          switch (mt) {
            case 1: moe_bf16::rows_dot<1, kStreams, L>(blk, sc, w.nb, xd, out, 1); break;
            case 2: moe_bf16::rows_dot<2, kStreams, L>(blk, sc, w.nb, xd, out, 1); break;
            default: moe_bf16::rows_dot<3, kStreams, L>(blk, sc, w.nb, xd, out, 1); break;
          }
        });
      }
    }
  }

  // Each K-step of the tile is decoded (scaled) once, packed into a panel and applied to all m tokens.
  GPTOSS_AVX512_BF16 static void tile_product_gemm(const Mxfp4Matrix& w, int64_t e, int64_t r0, int64_t r1,
                                                   const uint16_t* const* x, int64_t m, float* c, Scratch& s) {
    const int64_t rows = r1 - r0, nb = w.nb, kc_max = kStepBlocks * kMxfp4Block;
    s.rows.resize(kTileRows * kc_max);
    s.packed.resize(kc_max / 2 * kTileRows);
    s.acc.assign(m * kTileRows, 0.0f);
    s.x.resize(m);
    for (int64_t k0 = 0; k0 < nb; k0 += kStepBlocks) {
      const int64_t k1 = std::min(nb, k0 + kStepBlocks);
      const int64_t kc = (k1 - k0 + 1) / 2 * kChunk;  // whole chunks: a lone last block is zero padded
      prefetch_next_tile(w, e, r1, rows, k0 / kStepBlocks, (nb + kStepBlocks - 1) / kStepBlocks);
      with_layout(w, [&](auto layout) {
        w.for_rows(r0, r1, [&](int64_t r) {
          moe_bf16::decode_scaled<decltype(layout)>(w.row_blocks(e, r), w.row_scales(e, r), k0, k1,
                                                    s.rows.data() + (r - r0) * kc_max);
        });
      });
      gemm_bf16::pack_panel(s.rows.data(), kc_max, rows, kc, 0, kc / 2, s.packed.data());
      for (int64_t t = 0; t < m; ++t) s.x[t] = x[t] + k0 * kMxfp4Block;
      gemm_bf16::panel_times_rows(s.packed.data(), kc / 2, s.x.data(), m, s.acc.data());
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < m; ++t) c[r * m + t] = s.acc[t * kTileRows + r];
  }
};
#endif

#if GPTOSS_HAVE_AMX_KERNELS
// The AMX path (bf16 inputs, AMX CPUs): Bf16Path's input rows and few-token kernel; from
// kAmxMinTokens tokens per expert a tile is decoded into A tiles (moe_mxfp4_amx.h) and multiplied
// with the expert's B panels, packed once per expert and phase.
struct AmxPath : Bf16Path {
  static constexpr int64_t kAmxMinTokens = 4;
  static_assert(kTileRows == amx::kRows, "a tile of rows is one pair of A tiles");

  struct Scratch : Bf16Path::Scratch {
    amx::TileScope tiles;
    amx::AlignedVector<uint16_t> a;  // [K tiles][32 rows][32]: the tile, decoded and scaled
    amx::AlignedVector<uint16_t> b;  // the expert's B panels
    amx::AlignedVector<float> c;     // [32][m rounded up to 16]
  };

  static int64_t k_tiles(int64_t nb) { return 2 * ((nb + 1) / 2); }  // two per chunk

  static void store_act(const Epilogue& ep, const float* c, int64_t m, int64_t r0, int64_t r1, const float* b1,
                        uint16_t* act, int64_t Iw, int64_t Ip) {
    if (m < kAmxMinTokens) return Bf16Path::store_act(ep, c, m, r0, r1, b1, act, Iw, Ip);
    moe_amx::store_act(c, m, b1 + r0, ep.alpha, ep.limit, act, Iw, r0 / 2, ep.ggml);
  }

  static void add_down(const Epilogue& ep, const float* c, int64_t m, int64_t r0, int64_t r1, const float* b2,
                       const int64_t* order, float* out, int64_t D) {
    if (m < kAmxMinTokens) return Bf16Path::add_down(ep, c, m, r0, r1, b2, order, out, D);
    moe_amx::add_down(c, m, b2 + r0, ep.weights, order, ep.A, out + r0, D);
  }

  static void begin_expert(const uint16_t* const* x, int64_t m, int64_t k, Scratch& s) {
    if (m < kAmxMinTokens) return;
    const int64_t tiles = k_tiles(k / kMxfp4Block);
    s.b.resize((m + amx::kTileTokens - 1) / amx::kTileTokens * tiles * amx::kBTileWords);
    amx::pack_b(m, tiles, moe_amx::ChunkHalves{x}, s.b.data());
  }

  static void tiles_product(const Mxfp4Matrix& w, int64_t e, const int64_t* r0, int count, const uint16_t* const* x,
                            int64_t m, float* const* c, Scratch& s) {
    if (m < kAmxMinTokens) return Bf16Path::tiles_product(w, e, r0, count, x, m, c, s);
    for (int k = 0; k < count; ++k) tile_product(w, e, r0[k], r0[k] + kTileRows, x, m, c[k], s);
  }

  static void tile_product(const Mxfp4Matrix& w, int64_t e, int64_t r0, int64_t r1, const uint16_t* const* x,
                           int64_t m, float* c, Scratch& s) {
    const int64_t tiles = k_tiles(w.nb), ldc = (m + amx::kTileTokens - 1) / amx::kTileTokens * amx::kTileTokens;
    s.a.resize(tiles * moe_amx::kATileWords);
    with_layout(w, [&](auto layout) {
      w.for_rows(r0, r1, [&](int64_t r) {
        moe_amx::decode_row<decltype(layout)>(w.row_blocks(e, r), w.row_scales(e, r), w.nb, r - r0, s.a.data());
      });
    });
    prefetch_next_tile(w, e, r1, kTileRows, 0, 1);  // into L2 while the tiles multiply
    s.tiles.ensure();
    s.c.resize(kTileRows * ldc);
    amx::rows_times_all_tokens(reinterpret_cast<const char*>(s.a.data()), 2 * amx::kTileK,
                               2 * moe_amx::kATileWords, 16 * 2 * amx::kTileK, s.b.data(), m, tiles, s.c.data(), ldc);
    for (int64_t r = 0; r < kTileRows; ++r) std::copy(s.c.data() + r * ldc, s.c.data() + r * ldc + m, c + r * m);
  }
};
#endif

// Copies rows of x (float32 or bf16) into the path's input rows (kCopies × width values each, width
// the path's padded_width), zero padded; permuted within blocks for weights in ggml's layout.
template <typename Path, typename T>
void to_input_rows(const T* x, int64_t rows, int64_t dim, int64_t width, bool ggml, typename Path::Value* out) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      typename Path::Value* o = out + n * Path::kCopies * width;
      std::fill(o, o + Path::kCopies * width, typename Path::Value(0));
      for (int64_t i = 0; i < dim; ++i) Path::put(o, width, input_position(i, ggml), static_cast<float>(x[n * dim + i]));
    }
  });
}

struct Routing {
  std::vector<int64_t> experts;  // experts used by at least one pair, ascending
  std::vector<int64_t> begin;    // pairs of experts[i] are order[begin[i] .. begin[i + 1])
  std::vector<int64_t> order;    // pair indices n·A + a grouped by expert, ascending within an expert
};

Routing group_by_expert(const int64_t* ids, int64_t pairs, int64_t num_experts) {
  std::vector<int64_t> count(num_experts + 1, 0);
  for (int64_t p = 0; p < pairs; ++p) ++count[ids[p] + 1];
  for (int64_t e = 0; e < num_experts; ++e) count[e + 1] += count[e];
  Routing r;
  r.order.resize(pairs);
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t p = 0; p < pairs; ++p) r.order[fill[ids[p]]++] = p;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (count[e + 1] > count[e]) {
      r.experts.push_back(e);
      r.begin.push_back(count[e]);
    }
  }
  r.begin.push_back(pairs);
  return r;
}

// Minimum multiply-adds per thread before a phase is split across threads.
constexpr int64_t kMinParallelWork = 1 << 17;

struct Problem {
  int64_t N, A, D, I, E;
  const int64_t* ids;      // [N, A]
  const float* weights;    // [N, A]
  Mxfp4Matrix w1, w2;      // [E, 2I, D/32 blocks], [E, D, I/32 blocks], both in one layout
  const float* b1;         // [E, 2I]
  const float* b2;         // [E, D]
  float alpha, limit;
  bool act_bf16;           // round act to bfloat16 (the compute dtype) before the second product
};

constexpr int kMaxLockstep = 4;  // the most tiles a path reads in lockstep (Path::lockstep_tiles)

// Calls use(r0, count, cs) for a thread's tiles [begin, end) in groups of Path::lockstep_tiles(m): the
// range is cut into that many sub-ranges, and group i holds tile i of each (first rows r0[k], products
// into cs[k], slices of c, which holds kMaxLockstep·kTileRows·max_m floats). One tile per group walks
// the range in order.
template <typename Path, typename Use>
void for_tile_groups(int64_t begin, int64_t end, int64_t m, int64_t max_m, float* c, Use&& use) {
  const int lock = Path::lockstep_tiles(m);
  TORCH_INTERNAL_ASSERT(lock >= 1 && lock <= kMaxLockstep);
  const int64_t per_stream = (end - begin + lock - 1) / lock;
  float* cs[kMaxLockstep];
  for (int k = 0; k < lock; ++k) cs[k] = c + k * Path::kTileRows * max_m;
  for (int64_t i = 0; i < per_stream; ++i) {
    int64_t r0[kMaxLockstep];
    int count = 0;
    for (int k = 0; k < lock; ++k) {
      const int64_t tile = begin + k * per_stream + i;
      if (tile < end) r0[count++] = tile * Path::kTileRows;
    }
    use(r0, count, cs);
  }
}

// xc: x as the path's input rows [N, kCopies·Dp]. out: [N, D] float32, overwritten.
template <typename Path>
void moe_forward(const Problem& pb, const typename Path::Value* xc, float* out) {
  using Value = typename Path::Value;
  const int64_t N = pb.N, A = pb.A, D = pb.D, I = pb.I, P = N * A;
  const int64_t Dp = Path::padded_width(D), Ip = Path::padded_width(I);
  const Routing routing = group_by_expert(pb.ids, P, pb.E);
  const int64_t used = static_cast<int64_t>(routing.experts.size());
  std::fill(out, out + N * D, 0.0f);
  if (P == 0) return;

  const Epilogue ep{pb.alpha, pb.limit, pb.act_bf16, pb.weights, A, pb.w1.ggml()};

  // x rows of each pair, grouped by expert; act rows are simply the grouped pair index.
  std::vector<const Value*> x_rows(P), act_rows(P);
  const int64_t Dw = Path::kCopies * Dp, Iw = Path::kCopies * Ip;  // input row lengths
  std::vector<Value> act(static_cast<size_t>(P) * Iw, Value(0));  // [P, Iw]: input rows, zero padded
  for (int64_t q = 0; q < P; ++q) {
    x_rows[q] = xc + (routing.order[q] / A) * Dw;
    act_rows[q] = act.data() + q * Iw;
  }
  const int64_t max_m = [&] {
    int64_t best = 0;
    for (int64_t i = 0; i < used; ++i) best = std::max(best, routing.begin[i + 1] - routing.begin[i]);
    return best;
  }();

  // Phase 1: act = swiglu(W1·x + b1), tiles of Path::kTileRows rows of W1 (half as many act values).
  const int64_t tiles1 = (2 * I + Path::kTileRows - 1) / Path::kTileRows;
  const int64_t grain1 = std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, Path::kTileRows * D * P));
  at::parallel_for(0, tiles1, grain1, [&](int64_t begin, int64_t end) {
    std::vector<float> c(kMaxLockstep * Path::kTileRows * max_m);
    typename Path::Scratch scratch;
    for (int64_t i = 0; i < used; ++i) {
      const int64_t e = routing.experts[i], q0 = routing.begin[i], m = routing.begin[i + 1] - q0;
      const float* b1e = pb.b1 + e * 2 * I;
      Path::begin_expert(x_rows.data() + q0, m, D, scratch);
      for_tile_groups<Path>(begin, end, m, max_m, c.data(), [&](const int64_t* r0, int count, float* const* cs) {
        Path::tiles_product(pb.w1, e, r0, count, x_rows.data() + q0, m, cs, scratch);
        for (int k = 0; k < count; ++k)
          Path::store_act(ep, cs[k], m, r0[k], std::min(2 * I, r0[k] + Path::kTileRows), b1e, act.data() + q0 * Iw, Iw, Ip);
      });
    }
  });

  // Phase 2: out[n] += w·(W2·act + b2) over output tiles of Path::kTileRows rows, experts in ascending order.
  const int64_t tiles2 = (D + Path::kTileRows - 1) / Path::kTileRows;
  const int64_t grain2 = std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, Path::kTileRows * I * P));
  at::parallel_for(0, tiles2, grain2, [&](int64_t begin, int64_t end) {
    std::vector<float> c(kMaxLockstep * Path::kTileRows * max_m);
    typename Path::Scratch scratch;
    for (int64_t i = 0; i < used; ++i) {
      const int64_t e = routing.experts[i], q0 = routing.begin[i], m = routing.begin[i + 1] - q0;
      const float* b2e = pb.b2 + e * D;
      Path::begin_expert(act_rows.data() + q0, m, I, scratch);
      for_tile_groups<Path>(begin, end, m, max_m, c.data(), [&](const int64_t* r0, int count, float* const* cs) {
        Path::tiles_product(pb.w2, e, r0, count, act_rows.data() + q0, m, cs, scratch);
        for (int k = 0; k < count; ++k)
          Path::add_down(ep, cs[k], m, r0[k], std::min(D, r0[k] + Path::kTileRows), b2e, routing.order.data() + q0, out, D);
      });
    }
  });
}

}  // namespace

namespace {

void check_common(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_weights,
                  std::initializer_list<const at::Tensor*> weights, const at::Tensor& b1, const at::Tensor& b2) {
  GPTOSS_CHECK_DIM(x, 2);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "x must be float32 or bfloat16, got ", x.scalar_type());
  GPTOSS_CHECK_DIM(expert_ids, 2);
  TORCH_CHECK(expert_ids.scalar_type() == at::kLong || expert_ids.scalar_type() == at::kInt,
              "expert_ids must be int64 or int32, got ", expert_ids.scalar_type());
  GPTOSS_CHECK_DIM(expert_weights, 2);
  GPTOSS_CHECK_DTYPE(expert_weights, at::kFloat);
  GPTOSS_CHECK_DIM(b1, 2);
  GPTOSS_CHECK_DTYPE(b1, at::kFloat);
  GPTOSS_CHECK_DIM(b2, 2);
  GPTOSS_CHECK_DTYPE(b2, at::kFloat);
  std::vector<const at::Tensor*> inputs{&expert_ids, &expert_weights, &b1, &b2};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  for (const at::Tensor* t : inputs)
    TORCH_CHECK(t->device() == x.device(), "all moe_mxfp4 inputs must be on x's device (", x.device(), ")");
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(D % kMxfp4Block == 0, "x rows have ", D, " values, not a multiple of ", kMxfp4Block);
  TORCH_CHECK(expert_ids.size(0) == N, "expert_ids has ", expert_ids.size(0), " rows but x has ", N);
  TORCH_CHECK(expert_weights.sizes() == expert_ids.sizes(), "expert_weights has shape ", expert_weights.sizes(),
              " but expert_ids has shape ", expert_ids.sizes());
}

void check_biases(const at::Tensor& b1, const at::Tensor& b2, int64_t E, int64_t I2, int64_t D) {
  TORCH_CHECK(b1.size(0) == E && b1.size(1) == I2, "b1 must be [", E, ", ", I2, "], got ", b1.sizes());
  TORCH_CHECK(b2.size(0) == E && b2.size(1) == D, "b2 must be [", E, ", ", D, "], got ", b2.sizes());
}

// Checks the routing, fills in everything of pb but the weight matrices, runs the kernels of the CPU's
// family and returns out [N, D] float32.
at::Tensor run(Problem pb, const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_weights,
               const at::Tensor& b1, const at::Tensor& b2, double swiglu_alpha, double swiglu_limit) {
  const int64_t N = x.size(0), D = x.size(1), E = pb.E;
  const at::Tensor ids = expert_ids.to(at::kLong).contiguous();
  const int64_t* idp = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    TORCH_CHECK(idp[i] >= 0 && idp[i] < E, "expert_ids must be in [0, ", E, "), got ", idp[i]);

  const at::Tensor xc = x.contiguous(), wc = expert_weights.contiguous();
  const at::Tensor b1c = b1.contiguous(), b2c = b2.contiguous();
  at::Tensor out = at::empty({N, D}, x.options().dtype(at::kFloat));

  pb.N = N, pb.A = expert_ids.size(1), pb.D = D;
  pb.ids = idp;
  pb.weights = wc.data_ptr<float>();
  pb.b1 = b1c.data_ptr<float>();
  pb.b2 = b2c.data_ptr<float>();
  pb.alpha = static_cast<float>(swiglu_alpha);
  pb.limit = static_cast<float>(swiglu_limit);
  pb.act_bf16 = x.scalar_type() == at::kBFloat16;
  const bool ggml = pb.w1.ggml();

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
  if (pb.act_bf16 && avx512_bf16_enabled()) {
    const int64_t width = Bf16Path::padded_width(D);
    std::vector<uint16_t> x_rows(static_cast<size_t>(N) * Bf16Path::kCopies * width);
    to_input_rows<Bf16Path>(xc.data_ptr<c10::BFloat16>(), N, D, width, ggml, x_rows.data());
#if GPTOSS_HAVE_AMX_KERNELS
    if (amx_enabled()) {
      moe_forward<AmxPath>(pb, x_rows.data(), out.data_ptr<float>());
      return out;
    }
#endif
    moe_forward<Bf16Path>(pb, x_rows.data(), out.data_ptr<float>());
    return out;
  }
#endif
  std::vector<float> x_rows(static_cast<size_t>(N) * padded(D));
  if (pb.act_bf16)
    to_input_rows<FloatPath>(xc.data_ptr<c10::BFloat16>(), N, D, padded(D), ggml, x_rows.data());
  else
    to_input_rows<FloatPath>(xc.data_ptr<float>(), N, D, padded(D), ggml, x_rows.data());
  moe_forward<FloatPath>(pb, x_rows.data(), out.data_ptr<float>());
  return out;
}

}  // namespace

at::Tensor moe_mxfp4_cpu(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_weights,
                         const at::Tensor& w1_blocks, const at::Tensor& w1_scales, const at::Tensor& b1,
                         const at::Tensor& w2_blocks, const at::Tensor& w2_scales, const at::Tensor& b2,
                         double swiglu_alpha, double swiglu_limit) {
  check_common(x, expert_ids, expert_weights, {&w1_blocks, &w1_scales, &w2_blocks, &w2_scales}, b1, b2);
  GPTOSS_CHECK_DIM(w1_blocks, 4);
  GPTOSS_CHECK_DTYPE(w1_blocks, at::kByte);
  GPTOSS_CHECK_DIM(w1_scales, 3);
  GPTOSS_CHECK_DTYPE(w1_scales, at::kByte);
  GPTOSS_CHECK_DIM(w2_blocks, 4);
  GPTOSS_CHECK_DTYPE(w2_blocks, at::kByte);
  GPTOSS_CHECK_DIM(w2_scales, 3);
  GPTOSS_CHECK_DTYPE(w2_scales, at::kByte);

  const int64_t D = x.size(1), E = w1_blocks.size(0), I2 = w1_blocks.size(1);
  TORCH_CHECK(I2 % (2 * kMxfp4Block) == 0, "w1_blocks has ", I2, " rows, not twice a multiple of ", kMxfp4Block);
  const int64_t I = I2 / 2;
  TORCH_CHECK(w1_blocks.size(2) == D / kMxfp4Block && w1_blocks.size(3) == kMxfp4BlockBytes,
              "w1_blocks must be [E, 2I, ", D / kMxfp4Block, ", 16] for x rows of ", D, ", got ", w1_blocks.sizes());
  TORCH_CHECK(w1_scales.size(0) == E && w1_scales.size(1) == I2 && w1_scales.size(2) == D / kMxfp4Block,
              "w1_scales must be ", w1_blocks.sizes().slice(0, 3), ", got ", w1_scales.sizes());
  TORCH_CHECK(w2_blocks.size(0) == E && w2_blocks.size(1) == D && w2_blocks.size(2) == I / kMxfp4Block &&
                  w2_blocks.size(3) == kMxfp4BlockBytes,
              "w2_blocks must be [", E, ", ", D, ", ", I / kMxfp4Block, ", 16], got ", w2_blocks.sizes());
  TORCH_CHECK(w2_scales.size(0) == E && w2_scales.size(1) == D && w2_scales.size(2) == I / kMxfp4Block,
              "w2_scales must be [", E, ", ", D, ", ", I / kMxfp4Block, "], got ", w2_scales.sizes());
  check_biases(b1, b2, E, I2, D);

  const at::Tensor w1b = w1_blocks.contiguous(), w1s = w1_scales.contiguous();
  const at::Tensor w2b = w2_blocks.contiguous(), w2s = w2_scales.contiguous();
  Problem pb;
  pb.E = E, pb.I = I;
  pb.w1 = {w1b.data_ptr<uint8_t>(), w1s.data_ptr<uint8_t>(), I2, D / kMxfp4Block};
  pb.w2 = {w2b.data_ptr<uint8_t>(), w2s.data_ptr<uint8_t>(), D, I / kMxfp4Block};
  return run(pb, x, expert_ids, expert_weights, b1, b2, swiglu_alpha, swiglu_limit);
}

at::Tensor moe_mxfp4_ggml_cpu(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_weights,
                              const at::Tensor& gate, const at::Tensor& up, const at::Tensor& b1,
                              const at::Tensor& down, const at::Tensor& b2, double swiglu_alpha, double swiglu_limit) {
  check_common(x, expert_ids, expert_weights, {&gate, &up, &down}, b1, b2);
  for (const auto& [t, name] : {std::pair{&gate, "gate"}, std::pair{&up, "up"}, std::pair{&down, "down"}}) {
    TORCH_CHECK(t->dim() == 4 && t->size(3) == kMxfp4BlockBytes + 1, name,
                " must be ggml's MXFP4 blocks uint8 [E, rows, blocks, 17], got shape ", t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kByte, name, " must be uint8, got ", t->scalar_type());
    // Read in place (they are the mapped file): no contiguous copy.
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous (a GGUF tensor as mapped)");
  }
  const int64_t D = x.size(1), E = gate.size(0), I = gate.size(1);
  TORCH_CHECK(I % kMxfp4Block == 0, "gate has ", I, " rows, not a multiple of ", kMxfp4Block);
  TORCH_CHECK(gate.size(2) == D / kMxfp4Block, "gate must be [E, I, ", D / kMxfp4Block, ", 17] for x rows of ", D,
              ", got ", gate.sizes());
  TORCH_CHECK(up.sizes() == gate.sizes(), "up must have gate's shape ", gate.sizes(), ", got ", up.sizes());
  TORCH_CHECK(down.size(0) == E && down.size(1) == D && down.size(2) == I / kMxfp4Block,
              "down must be [", E, ", ", D, ", ", I / kMxfp4Block, ", 17], got ", down.sizes());
  check_biases(b1, b2, E, 2 * I, D);

  // Each block: its scale byte, then its 16 bytes of nibbles.
  const uint8_t *g = gate.data_ptr<uint8_t>(), *u = up.data_ptr<uint8_t>(), *d = down.data_ptr<uint8_t>();
  Problem pb;
  pb.E = E, pb.I = I;
  pb.w1 = {g + 1, g, 2 * I, D / kMxfp4Block, kGgmlStrides, u + 1, u};
  pb.w2 = {d + 1, d, D, I / kMxfp4Block, kGgmlStrides};
  return run(pb, x, expert_ids, expert_weights, b1, b2, swiglu_alpha, swiglu_limit);
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) {
  m.impl("moe_mxfp4", &gptoss::moe_mxfp4_cpu);
  m.impl("moe_mxfp4_ggml", &gptoss::moe_mxfp4_ggml_cpu);
}
