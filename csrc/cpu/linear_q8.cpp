// Linear layer with 8-bit weights on CPU: y = x·Wᵀ + b in float32, W in llama.cpp's Q8_0 layout:
// int8 values q [out, in] and one float16 scale d per block of 32 along a row, W[j, k] = q[j, k]·d[j, k/32].
// x is used in float32 as given (activations are not quantized).
//
// Few rows of x (decoding): memory-bound, so each thread streams its range of W rows as sub-ranges in
// lockstep (stream_rows.h), widening 8 int8 values at a time to float32 (vpmovsxbd + vcvtdq2ps): half
// the bytes of a bf16 row per weight. One row of x forms each block's Σ q·x before scaling it by d;
// several rows scale the widened weights once (q·d is exact in float32) and share them.
// Many rows of x (prompts): compute-bound, so blocks of W rows are dequantized to float32 into a
// buffer that stays in cache and multiplied with at::mm (sgemm), as the bf16 path widens them.
// The two paths sum in different orders; each is independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../check.h"
#include "stream_rows.h"
#include "vec.h"
#include "widened_mm.h"

namespace gptoss {
namespace {

constexpr int64_t kQ8Block = 32;

inline float half_to_float(c10::Half h) { return static_cast<float>(h); }

#if GPTOSS_AVX2
inline __m256 load_q8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Up to 8 float16 scales from d (n of them left in the row) as float32 lanes.
inline __m256 load_scales8(const c10::Half* d, int64_t n) {
  if (n >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d)));
  alignas(16) uint16_t tail[8] = {};
  std::memcpy(tail, d, n * sizeof(uint16_t));
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)));
}

// NB rows of x against S rows of W (one per stream): per block, Σ q·x in one vector per (stream, x row),
// then acc += that · d. y[s] advances by ldy[s] per x row.
template <int S, int NB>
inline void dot_q8_streams(const float* x, int64_t ldx, int64_t nb, const int8_t* const* w,
                           const c10::Half* const* d, const float* bias, float* const* y, const int64_t* ldy) {
  __m256 acc[S][NB];
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n) acc[s][n] = _mm256_setzero_ps();
  __m256 scales[S];  // the float16 scales of blocks b & ~7 .. (b & ~7) + 7, widened 8 at a time
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k = b * kQ8Block;
    if (b % 8 == 0)
      for (int s = 0; s < S; ++s) scales[s] = load_scales8(d[s] + b, nb - b);
    __m256 block[S][NB];
    for (int u = 0; u < 4; ++u) {
      __m256 xv[NB];
      for (int n = 0; n < NB; ++n) xv[n] = _mm256_loadu_ps(x + n * ldx + k + 8 * u);
      for (int s = 0; s < S; ++s) {
        const __m256 wv = load_q8x8(w[s] + k + 8 * u);
        for (int n = 0; n < NB; ++n) block[s][n] = u == 0 ? _mm256_mul_ps(xv[n], wv) : _mm256_fmadd_ps(xv[n], wv, block[s][n]);
      }
    }
    const __m256i lane = _mm256_set1_epi32(static_cast<int>(b % 8));
    for (int s = 0; s < S; ++s) {
      const __m256 scale = _mm256_permutevar8x32_ps(scales[s], lane);
      for (int n = 0; n < NB; ++n) acc[s][n] = _mm256_fmadd_ps(block[s][n], scale, acc[s][n]);
    }
  }
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n) y[s][n * ldy[s]] = hsum(acc[s][n]) + bias[s];
}

// Several rows of x: each W vector is widened and scaled once (q·d, exact in float32) and serves all
// NB rows, which then need one accumulator each instead of one per block as well (registers for
// S = 2 streams × 4 rows).
template <int S, int NB>
inline void dot_q8_scaled(const float* x, int64_t ldx, int64_t nb, const int8_t* const* w,
                          const c10::Half* const* d, const float* bias, float* const* y, const int64_t* ldy) {
  __m256 acc[S][NB];
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n) acc[s][n] = _mm256_setzero_ps();
  __m256 scales[S];
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k = b * kQ8Block;
    if (b % 8 == 0)
      for (int s = 0; s < S; ++s) scales[s] = load_scales8(d[s] + b, nb - b);
    const __m256i lane = _mm256_set1_epi32(static_cast<int>(b % 8));
    __m256 scale[S];
    for (int s = 0; s < S; ++s) scale[s] = _mm256_permutevar8x32_ps(scales[s], lane);
    for (int u = 0; u < 4; ++u) {
      __m256 xv[NB];
      for (int n = 0; n < NB; ++n) xv[n] = _mm256_loadu_ps(x + n * ldx + k + 8 * u);
      for (int s = 0; s < S; ++s) {
        const __m256 wv = _mm256_mul_ps(load_q8x8(w[s] + k + 8 * u), scale[s]);
        for (int n = 0; n < NB; ++n) acc[s][n] = _mm256_fmadd_ps(xv[n], wv, acc[s][n]);
      }
    }
  }
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NB; ++n) y[s][n * ldy[s]] = hsum(acc[s][n]) + bias[s];
}
#endif

// The streaming path: 4 streams per thread for one row of x (per-block sums); 2 streams of up to
// 4 rows at a time for more (scaled weights).
void linear_q8_stream(const float* x, int64_t rows, int64_t in, const int8_t* q, const c10::Half* d,
                      int64_t out_features, const float* bias, float* y) {
  const int64_t nb = in / kQ8Block;
  const int64_t grain = std::max<int64_t>(1, kMinTaskBytes / std::max<int64_t>(1, in));
#if GPTOSS_AVX2
  auto streamed = [&](auto streams) {
    constexpr int S = decltype(streams)::value;
    for_stream_rows<S>(out_features, grain, q, in, bias, y, [&](auto wr, auto b, auto yr, auto ldy) {
      const c10::Half* dr[S];
      for (int s = 0; s < S; ++s) dr[s] = d + (wr[s] - q) / in * nb;  // the scales of the same rows
      if (S == 4) {  // one row of x
        dot_q8_streams<S, 1>(x, in, nb, wr, dr, b, yr, ldy);
        return;
      }
      for (int64_t n = 0; n < rows; n += 4) {
        float* yn[S];
        for (int s = 0; s < S; ++s) yn[s] = yr[s] + n * ldy[s];
        const float* xn = x + n * in;
        switch (std::min<int64_t>(4, rows - n)) {
          case 1: dot_q8_scaled<S, 1>(xn, in, nb, wr, dr, b, yn, ldy); break;
          case 2: dot_q8_scaled<S, 2>(xn, in, nb, wr, dr, b, yn, ldy); break;
          case 3: dot_q8_scaled<S, 3>(xn, in, nb, wr, dr, b, yn, ldy); break;
          default: dot_q8_scaled<S, 4>(xn, in, nb, wr, dr, b, yn, ldy); break;
        }
      }
    });
  };
  if (rows == 1)
    streamed(std::integral_constant<int, 4>());
  else
    streamed(std::integral_constant<int, 2>());
#else
  at::parallel_for(0, out_features, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      for (int64_t n = 0; n < rows; ++n) {
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
          float block = 0.0f;
          for (int64_t i = 0; i < kQ8Block; ++i)
            block += x[n * in + b * kQ8Block + i] * static_cast<float>(q[j * in + b * kQ8Block + i]);
          sum += block * half_to_float(d[j * nb + b]);
        }
        y[n * out_features + j] = sum + (bias ? bias[j] : 0.0f);
      }
  });
#endif
}

// dst[r, :] = q[r, :]·d[r, :/32] for a block of rows.
void dequantize_rows(const int8_t* q, const c10::Half* d, int64_t rows, int64_t in, float* dst) {
  const int64_t nb = in / kQ8Block;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const float scale = half_to_float(d[r * nb + b]);
        const int8_t* src = q + r * in + b * kQ8Block;
        float* out = dst + r * in + b * kQ8Block;
        int64_t i = 0;
#if GPTOSS_AVX2
        const __m256 sv = _mm256_set1_ps(scale);
        for (; i < kQ8Block; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(load_q8x8(src + i), sv));
#endif
        for (; i < kQ8Block; ++i) out[i] = static_cast<float>(src[i]) * scale;
      }
  });
}

}  // namespace

at::Tensor linear_q8_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                         const c10::optional<at::Tensor>& bias_opt) {
  const at::Tensor b = check_linear_q8(x, qweight, scales, bias_opt);
  const int64_t in = qweight.size(1), out_features = qweight.size(0);
  const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kFloat));
  if (rows == 0 || out_features == 0) return out;
  at::Tensor y = out.view({rows, out_features});
  if (in == 0) {  // empty rows: only the bias
    b.defined() ? y.copy_(b.expand({rows, out_features})) : y.zero_();
    return out;
  }
  const at::Tensor x2 = x.reshape({rows, in}).to(at::kFloat).contiguous();
  const at::Tensor q = qweight.contiguous(), d = scales.contiguous();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  if (rows <= kStreamMaxRows) {
    linear_q8_stream(x2.data_ptr<float>(), rows, in, q.data_ptr<int8_t>(), d.data_ptr<c10::Half>(), out_features, bp,
                     y.data_ptr<float>());
    return out;
  }
  widened_mm(x2, out_features, y, [&](int64_t j, int64_t n, float* dst) {
    dequantize_rows(q.data_ptr<int8_t>() + j * in, d.data_ptr<c10::Half>() + j * (in / kQ8Block), n, in, dst);
  });
  if (b.defined()) y.add_(b);
  return out;
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("linear_q8", &gptoss::linear_q8_cpu); }
