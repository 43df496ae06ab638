// Linear layer on CPU: y = x·Wᵀ + b in float32, x rounded to W's dtype (bfloat16 or float32) first.
//
// Few rows of x (decoding): memory-bound, so each weight row is streamed once by an AVX2+FMA kernel
// that widens bf16 to fp32 on the fly into a few accumulators per x row and reduces them
// horizontally at the end; both threads stream disjoint ranges of output rows, each range read as
// four (one or two rows of x) or two (three to eight) sub-ranges in lockstep: more memory streams in
// flight, and each x vector loaded serves several W rows.
// Many rows of x (prompts): compute-bound, so blocks of W rows are widened to fp32 into a buffer
// that stays in cache and multiplied with at::mm (sgemm); float32 weights go to at::mm directly.
// On CPUs with AVX-512 BF16, bf16 weights are multiplied by vdpbf16ps straight from their bf16 rows
// (exact products, float32 sums): streamed the same way for few rows of x, and through packed
// panels (gemm_bf16.h) instead of widening + sgemm for many, at over twice sgemm's speed.
// Products are accumulated and returned in float32 without any rounding to bf16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../check.h"
#include "amx.h"
#include "gemm_bf16.h"
#include "stream_rows.h"
#include "vec.h"
#include "widened_mm.h"

namespace gptoss {
namespace {

// x rows sharing one pass over a W row in the AVX-512 BF16 streaming kernel.
constexpr int kRowGroup = 4;

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return bf16_to_float(v); }

#if GPTOSS_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) { return load_bf16x8(p); }
#endif

#if !GPTOSS_AVX2
// Without AVX2 (a build for a CPU that lacks it): y[n] = Σ_k x[n, k]·w[k] + bias for every row of x
// against one row of W.
template <typename W>
inline void dot_rows(const float* x, int64_t rows, int64_t in, const W* w, float bias, float* y, int64_t ldy) {
  for (int64_t n = 0; n < rows; ++n) {
    float sum = 0.0f;
    for (int64_t k = 0; k < in; ++k) sum += x[n * in + k] * to_float(w[k]);
    y[n * ldy] = sum + bias;
  }
}
#endif

#if GPTOSS_AVX2
// NB rows of x against S rows of W far apart (one per sub-range of a thread's range, read in
// lockstep): more memory streams in flight read more of the bandwidth than one row after another
// (on the 2-core AVX2 EPYC a bf16 [201088, 2880] matrix: 48 GB/s against 30 with one row of x),
// and each x vector loaded serves S rows of W. U accumulators per (stream, x row); a row's sum does
// not depend on which stream or thread computes it. y[s] advances by ldy[s] per x row.
template <int S, int NB, int U, typename W>
inline void dot_streams(const float* x, int64_t ldx, int64_t in, const W* const* w, const float* bias,
                        float* const* y, const int64_t* ldy) {
  __m256 acc[S][NB][U];
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n)
      for (int u = 0; u < U; ++u) acc[s][n][u] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 * U <= in; k += 8 * U) {
    for (int u = 0; u < U; ++u) {
      __m256 xv[NB];
      for (int n = 0; n < NB; ++n) xv[n] = _mm256_loadu_ps(x + n * ldx + k + 8 * u);
      for (int s = 0; s < S; ++s) {
        const __m256 wv = load8(w[s] + k + 8 * u);
        for (int n = 0; n < NB; ++n) acc[s][n][u] = _mm256_fmadd_ps(xv[n], wv, acc[s][n][u]);
      }
    }
  }
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n) {
      for (int u = 1; u < U; ++u) acc[s][n][0] = _mm256_add_ps(acc[s][n][0], acc[s][n][u]);
      float sum = hsum(acc[s][n][0]);
      for (int64_t t = k; t < in; ++t) sum += x[n * ldx + t] * to_float(w[s][t]);  // the tail
      y[s][n * ldy[s]] = sum + bias[s];
    }
}

// All rows of x against S streams' current W rows: groups of up to 4 x rows (8 accumulators or
// more in flight for every group size; S · NB · U of them fit the 16 registers with x and W).
template <int S, typename W>
inline void dot_streams_rows(const float* x, int64_t rows, int64_t in, const W* const* w, const float* bias,
                             float* const* y, const int64_t* ldy) {
  for (int64_t n = 0; n < rows; n += 4) {
    float* yn[S];
    for (int s = 0; s < S; ++s) yn[s] = y[s] + n * ldy[s];
    const float* xn = x + n * in;
    switch (std::min<int64_t>(4, rows - n)) {
      case 1: dot_streams<S, 1, 8 / S>(xn, in, in, w, bias, yn, ldy); break;
      case 2: dot_streams<S, 2, (S == 4 ? 1 : 2)>(xn, in, in, w, bias, yn, ldy); break;
      case 3: dot_streams<S, 3, 1>(xn, in, in, w, bias, yn, ldy); break;
      default: dot_streams<S, 4, 1>(xn, in, in, w, bias, yn, ldy); break;
    }
  }
}
#endif

// The streaming path: threads take contiguous ranges of output rows, each read as S sub-ranges in
// lockstep (4 streams for one or two rows of x, 2 for more: what fits the registers).
template <typename W>
void linear_stream(const float* x, int64_t rows, int64_t in, const W* w, int64_t ldw, int64_t out_features,
                   const float* bias, float* y) {
  const int64_t row_bytes = std::max<int64_t>(1, in * static_cast<int64_t>(sizeof(W)));
  const int64_t grain = std::max<int64_t>(1, kMinTaskBytes / row_bytes);
#if GPTOSS_AVX2
  auto streamed = [&](auto streams) {
    constexpr int S = decltype(streams)::value;
    for_stream_rows<S>(out_features, grain, w, ldw, bias, y, [&](auto wr, auto b, auto yr, auto ldy) {
      dot_streams_rows<S>(x, rows, in, wr, b, yr, ldy);
    });
  };
  if (rows <= 2)
    streamed(std::integral_constant<int, 4>());
  else
    streamed(std::integral_constant<int, 2>());
#else
  at::parallel_for(0, out_features, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      dot_rows(x, rows, in, w + j * ldw, bias ? bias[j] : 0.0f, y + j, out_features);
  });
#endif
}

// dst[r, :] = float(src[r, :]) for a block of bf16 rows.
void widen_rows(const c10::BFloat16* src, int64_t ld, int64_t rows, int64_t in, float* dst) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const c10::BFloat16* s = src + r * ld;
      float* d = dst + r * in;
      int64_t k = 0;
#if GPTOSS_AVX2
      for (; k + 8 <= in; k += 8) _mm256_storeu_ps(d + k, load_bf16x8(s + k));
#endif
      for (; k < in; ++k) d[k] = bf16_to_float(s[k]);
    }
  });
}

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
// Few rows of x (decoding) with bf16 weights: x kept in bf16 and vdpbf16ps doing 32 exact products per
// instruction. A thread reads its range of W rows as kStreams sub-ranges in lockstep (rows i, i + q,
// i + 2q, i + 3q): the hardware prefetchers follow each sub-range, and more streams in flight read
// more of the memory bandwidth. On the 2-core Sapphire Rapids VM, 4 streams per thread read a bf16
// [201088, 2880] matrix at 24-27 GB/s where one row after the other got 18-20.
constexpr int kStreams = 4;

// y_s[n·ldy_s] = W_s · x_n + bias_s for the kStreams rows W_s and NB rows of x.
template <int NB>
GPTOSS_AVX512_BF16 inline void dot_rows_bf16(const uint16_t* const* w, const float* bias, const uint16_t* x,
                                             int64_t ldx, int64_t in, float* const* y, const int64_t* ldy) {
  __m512 acc[kStreams][NB];
  for (int s = 0; s < kStreams; ++s)
    for (int n = 0; n < NB; ++n) acc[s][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < in; k += 32) {
    const __mmask32 mask = in - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (in - k)) - 1;
    __m512i xv[NB];
    for (int n = 0; n < NB; ++n) xv[n] = _mm512_maskz_loadu_epi16(mask, x + n * ldx + k);
    for (int s = 0; s < kStreams; ++s) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, w[s] + k);
      for (int n = 0; n < NB; ++n) acc[s][n] = _mm512_dpbf16_ps(acc[s][n], (__m512bh)wv, (__m512bh)xv[n]);
    }
  }
  for (int s = 0; s < kStreams; ++s)
    for (int n = 0; n < NB; ++n) y[s][n * ldy[s]] = _mm512_reduce_add_ps(acc[s][n]) + bias[s];
}

void linear_stream_bf16(const uint16_t* x, int64_t rows, int64_t in, const uint16_t* w, int64_t ldw,
                        int64_t out_features, const float* bias, float* y) {
  const int64_t grain = std::max<int64_t>(1, kMinTaskBytes / std::max<int64_t>(1, 2 * in));
  for_stream_rows<kStreams>(out_features, grain, w, ldw, bias, y, [&](auto wr, auto b, auto yr, auto ldy) {
    for (int64_t n = 0; n < rows; n += kRowGroup) {
      float* yn[kStreams];
      for (int s = 0; s < kStreams; ++s) yn[s] = yr[s] + n * ldy[s];
      switch (std::min<int64_t>(kRowGroup, rows - n)) {
        case 1: dot_rows_bf16<1>(wr, b, x + n * in, in, in, yn, ldy); break;
        case 2: dot_rows_bf16<2>(wr, b, x + n * in, in, in, yn, ldy); break;
        case 3: dot_rows_bf16<3>(wr, b, x + n * in, in, in, yn, ldy); break;
        default: dot_rows_bf16<4>(wr, b, x + n * in, in, in, yn, ldy); break;
      }
    }
  });
}

// Many rows of x with bf16 weights on AVX-512 BF16 CPUs: x (already rounded to bf16, rows padded to
// an even length) times packed 32-row panels of W (gemm_bf16.h). A thread owns whole panels; a panel
// is packed one K-step at a time (16 KB: L1) and applied to every x row before the next step.
constexpr int64_t kBf16StepPairs = 128;  // K-step: 256 values of 32 rows

void linear_bf16(const uint16_t* x, int64_t rows, int64_t in, int64_t ldx, const uint16_t* w, int64_t ldw,
                 int64_t out_features, const float* bias, float* y) {
  using gemm_bf16::kPanelRows;
  const int64_t panels = (out_features + kPanelRows - 1) / kPanelRows, pairs = (in + 1) / 2;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> packed(kBf16StepPairs * kPanelRows);
    std::vector<float> acc(rows * kPanelRows);
    std::vector<const uint16_t*> x_rows(rows);
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t j0 = panel * kPanelRows, n = std::min<int64_t>(kPanelRows, out_features - j0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t kp0 = 0; kp0 < pairs; kp0 += kBf16StepPairs) {
        const int64_t kps = std::min(kBf16StepPairs, pairs - kp0);
        gemm_bf16::pack_panel(w + j0 * ldw, ldw, n, in, kp0, kps, packed.data());
        for (int64_t t = 0; t < rows; ++t) x_rows[t] = x + t * ldx + 2 * kp0;
        gemm_bf16::panel_times_rows(packed.data(), kps, x_rows.data(), rows, acc.data());
      }
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t r = 0; r < n; ++r)
          y[t * out_features + j0 + r] = acc[t * kPanelRows + r] + (bias ? bias[j0 + r] : 0.0f);
    }
  });
}
#endif

#if GPTOSS_HAVE_AMX_KERNELS
// Many rows of x with bf16 weights on AMX CPUs: W is the A operand, x is packed once into B panels.
// A thread copies each of its 32-row panels into aligned A tiles (amx::pack_a) and multiplies it with
// a group of tokens whose B panels stay in L2 while the thread's panels pass under them.
constexpr int64_t kAmxGroupTokens = 256;  // 256 tokens × 2880 values: 1.5 MB of B panels

// amx::pack_b's source for x rows: K tile j of token n is values 32j..32j + 31, pairs in order.
struct NaturalPairs {
  const uint16_t* x;
  int64_t ldx, in;
  GPTOSS_AMX __m512i operator()(int64_t n, int64_t j) const {
    const int64_t k = j * amx::kTileK, left = std::min<int64_t>(amx::kTileK, in - k);
    return _mm512_maskz_loadu_epi16(left >= 32 ? ~__mmask32(0) : (__mmask32(1) << left) - 1, x + n * ldx + k);
  }
};

// y[t0 + t][j0 + r] = c[r][t] + bias[j0 + r] for r < n (≤ 32), t < tokens: 16×16 blocks of c
// ([32][ldc], row-major) transposed in registers.
GPTOSS_AMX void store_transposed(const float* c, int64_t ldc, int64_t n, int64_t tokens, const float* bias,
                                 float* y, int64_t ldy) {
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, n - r0);
    const __mmask16 row_mask = static_cast<__mmask16>((1u << nr) - 1);
    const __m512 bias_v = bias ? _mm512_maskz_loadu_ps(row_mask, bias + r0) : _mm512_setzero_ps();
    for (int64_t tb = 0; tb < tokens; tb += 16) {
      __m512i block[16];
      for (int i = 0; i < 16; ++i) block[i] = _mm512_loadu_si512(c + (r0 + i) * ldc + tb);
      gemm_bf16::transpose16x16(block);
      for (int64_t t = 0; t < std::min<int64_t>(16, tokens - tb); ++t)
        _mm512_mask_storeu_ps(y + (tb + t) * ldy + r0, row_mask, _mm512_add_ps(_mm512_castsi512_ps(block[t]), bias_v));
    }
  }
}

void linear_amx(const uint16_t* x, int64_t rows, int64_t in, int64_t ldx, const uint16_t* w, int64_t ldw,
                int64_t out_features, const float* bias, float* y) {
  using amx::kRows;
  const int64_t k_tiles = (in + amx::kTileK - 1) / amx::kTileK;
  const int64_t token_tiles = (rows + amx::kTileTokens - 1) / amx::kTileTokens;
  amx::AlignedVector<uint16_t> b(token_tiles * k_tiles * amx::kBTileWords);
  at::parallel_for(0, token_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tt = begin; tt < end; ++tt) {
      const int64_t t0 = tt * amx::kTileTokens;
      amx::pack_b(std::min<int64_t>(amx::kTileTokens, rows - t0), k_tiles, NaturalPairs{x + t0 * ldx, ldx, in},
                  b.data() + tt * k_tiles * amx::kBTileWords);
    }
  });
  const int64_t panels = (out_features + kRows - 1) / kRows;
  const int64_t group_tiles = kAmxGroupTokens / amx::kTileTokens;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    amx::TileScope tiles;
    tiles.ensure();
    amx::AlignedVector<float> c(kRows * group_tiles * amx::kTileTokens);
    amx::AlignedVector<uint16_t> a(k_tiles * amx::kATileWords);
    for (int64_t g = 0; g < token_tiles; g += group_tiles) {
      const int64_t tiles_here = std::min(group_tiles, token_tiles - g), t0 = g * amx::kTileTokens;
      const int64_t tokens = std::min(rows - t0, tiles_here * amx::kTileTokens), ldc = tiles_here * amx::kTileTokens;
      for (int64_t panel = begin; panel < end; ++panel) {
        const int64_t j0 = panel * kRows, n = std::min(kRows, out_features - j0);
        amx::pack_a(w + j0 * ldw, ldw, n, in, k_tiles, a.data());
        amx::rows_times_all_tokens(reinterpret_cast<const char*>(a.data()), 2 * amx::kTileK, 2 * amx::kATileWords,
                                   16 * 2 * amx::kTileK, b.data() + g * k_tiles * amx::kBTileWords, tokens, k_tiles,
                                   c.data(), ldc);
        store_transposed(c.data(), ldc, n, tokens, bias ? bias + j0 : nullptr, y + t0 * out_features + j0,
                         out_features);
      }
    }
  });
}
#endif

}  // namespace

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_opt) {
  TORCH_CHECK(x.dim() >= 1, "x must have at least one dim");
  GPTOSS_CHECK_DIM(weight, 2);
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16,
              "weight must be float32 or bfloat16, got ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating-point tensor, got ", x.scalar_type());
  const int64_t in = weight.size(1), out_features = weight.size(0);
  TORCH_CHECK(x.size(-1) == in, "x rows have ", x.size(-1), " entries but weight has ", in, " columns");
  GPTOSS_CHECK_SAME_DEVICE(x, weight);
  at::Tensor b;
  if (bias_opt.has_value() && bias_opt->defined()) {
    const at::Tensor& bias = *bias_opt;
    GPTOSS_CHECK_DIM(bias, 1);
    TORCH_CHECK(bias.size(0) == out_features, "bias has ", bias.size(0), " entries but weight has ", out_features,
                " rows");
    TORCH_CHECK(at::isFloatingType(bias.scalar_type()), "bias must be a floating-point tensor, got ",
                bias.scalar_type());
    GPTOSS_CHECK_SAME_DEVICE(bias, weight);
    b = bias.to(at::kFloat).contiguous();
  }

  // x in W's dtype: the op's rounding.
  const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  const at::Tensor x_w = x.reshape({rows, in}).to(weight.scalar_type());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kFloat));
  if (rows == 0 || out_features == 0) return out;
  at::Tensor y = out.view({rows, out_features});
  // A W with unit column stride is read in place (row stride ldw); anything else is copied once.
  const at::Tensor w = (weight.stride(1) == 1 && weight.stride(0) >= in) ? weight : weight.contiguous();
  const int64_t ldw = w.stride(0);
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;

#if GPTOSS_HAVE_AVX512_BF16_KERNELS
  if (rows <= kStreamMaxRows && in > 0 && w.scalar_type() == at::kBFloat16 && avx512_bf16_enabled()) {
    const at::Tensor xb = x_w.contiguous();
    linear_stream_bf16(reinterpret_cast<const uint16_t*>(xb.data_ptr<c10::BFloat16>()), rows, in,
                       reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>()), ldw, out_features, bp,
                       y.data_ptr<float>());
    return out;
  }
#if GPTOSS_HAVE_AMX_KERNELS
  if (rows > kStreamMaxRows && in > 0 && w.scalar_type() == at::kBFloat16 && amx_enabled()) {
    const at::Tensor xb = x_w.contiguous();
    linear_amx(reinterpret_cast<const uint16_t*>(xb.data_ptr<c10::BFloat16>()), rows, in, in,
               reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>()), ldw, out_features, bp,
               y.data_ptr<float>());
    return out;
  }
#endif
  if (rows > kStreamMaxRows && in > 0 && w.scalar_type() == at::kBFloat16 && avx512_bf16_enabled()) {
    // rows padded to an even length: a pair never reaches into the next row
    const at::Tensor xb = at::constant_pad_nd(x_w, {0, in % 2}).contiguous();
    linear_bf16(reinterpret_cast<const uint16_t*>(xb.data_ptr<c10::BFloat16>()), rows, in, xb.size(1),
                reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>()), ldw, out_features, bp,
                y.data_ptr<float>());
    return out;
  }
#endif
  const at::Tensor x2 = x_w.to(at::kFloat).contiguous();  // exact, in contiguous rows

  if (rows <= kStreamMaxRows || in == 0) {
    if (w.scalar_type() == at::kBFloat16)
      linear_stream(x2.data_ptr<float>(), rows, in, w.data_ptr<c10::BFloat16>(), ldw, out_features, bp,
                    y.data_ptr<float>());
    else
      linear_stream(x2.data_ptr<float>(), rows, in, w.data_ptr<float>(), ldw, out_features, bp, y.data_ptr<float>());
    return out;
  }

  if (w.scalar_type() == at::kFloat) {
    at::mm_out(y, x2, w.t());
  } else {
    const c10::BFloat16* wp = w.data_ptr<c10::BFloat16>();
    widened_mm(x2, out_features, y,
               [&](int64_t j, int64_t n, float* dst) { widen_rows(wp + j * ldw, ldw, n, in, dst); });
  }
  if (b.defined()) y.add_(b);
  return out;
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("linear", &gptoss::linear_cpu); }
