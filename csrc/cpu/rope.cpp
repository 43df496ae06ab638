// Rotary position embedding on CPU, in place: q [.., T, H, Dh] and k [.., T, K, Dh] (float32 or
// bfloat16, any strides), cos_sin [P, Dh] float32 (first half c·cos, second half c·sin), positions [T].
//
// Bit-exact with reference.rope_: each output is a·C − b·S (resp. b·C + a·S) evaluated as two float32
// products, each rounded, then one rounded difference (sum). GCC contracts `x*y - z*w` into an FMA
// even in ISO mode (-std=c++17, -O3 -mfma), which skips the rounding of one product, so every product
// passes through `opaque` below: an empty asm statement the compiler cannot see through, hence cannot
// fuse. bfloat16 tensors are computed in float32 and stored back rounded to nearest even, like the
// reference's copy_.
#include <ATen/Parallel.h>
#include <vector>

#include "../check.h"
#include "vec.h"

namespace gptoss {
namespace {

inline float opaque(float x) {
#if defined(__GNUC__)
  asm("" : "+x"(x));
#endif
  return x;
}

inline float rot_minus(float a, float c, float b, float s) { return opaque(a * c) - opaque(b * s); }
inline float rot_plus(float b, float c, float a, float s) { return opaque(b * c) + opaque(a * s); }

#if GPTOSS_AVX2
inline __m256 opaque(__m256 x) {
  asm("" : "+x"(x));
  return x;
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) { return load_bf16x8(p); }
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

// float32 -> bfloat16 rounded to nearest even, NaN -> 0x7FC0: the same rule as c10::BFloat16(float).
inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
#endif

// Rotates one head row x[0], x[step], .. x[(Dh-1)·step] with table row cs (C = cs[i], S = cs[half + i]).
template <typename T>
void rotate_row(T* x, int64_t step, const float* cs, int64_t half) {
  int64_t i = 0;
#if GPTOSS_AVX2
  if (step == 1) {
    for (; i + 8 <= half; i += 8) {
      const __m256 a = load8(x + i), b = load8(x + half + i);
      const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(cs + half + i);
      const __m256 lo = _mm256_sub_ps(opaque(_mm256_mul_ps(a, c)), opaque(_mm256_mul_ps(b, s)));
      const __m256 hi = _mm256_add_ps(opaque(_mm256_mul_ps(b, c)), opaque(_mm256_mul_ps(a, s)));
      store8(x + i, lo);
      store8(x + half + i, hi);
    }
  }
#endif
  for (; i < half; ++i) {
    T* pa = x + i * step;
    T* pb = x + (half + i) * step;
    const float a = static_cast<float>(*pa), b = static_cast<float>(*pb);
    const float c = cs[i], s = cs[half + i];
    *pa = static_cast<T>(rot_minus(a, c, b, s));
    *pb = static_cast<T>(rot_plus(b, c, a, s));
  }
}

// x [lead.., T, heads, Dh] with arbitrary strides: every (lead, t, head) row is rotated in place.
template <typename T>
void rotate_all(const at::Tensor& x, const float* table, int64_t dh, const int64_t* pos) {
  const int64_t nd = x.dim();
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end() - 1);  // every dim but Dh
  std::vector<int64_t> strides(x.strides().begin(), x.strides().end() - 1);
  const int64_t step = x.stride(nd - 1), half = dh / 2, t_dim = nd - 3;
  int64_t rows = 1;
  for (int64_t s : sizes) rows *= s;
  T* base = x.data_ptr<T>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t rest = r, offset = 0, t = 0;
      for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
        const int64_t coord = rest % sizes[d];
        rest /= sizes[d];
        offset += coord * strides[d];
        if (d == t_dim) t = coord;
      }
      rotate_row(base + offset, step, table + pos[t] * dh, half);
    }
  });
}

void rotate(const at::Tensor& x, const float* table, int64_t dh, const int64_t* pos) {
  if (x.scalar_type() == at::kFloat) {
    rotate_all<float>(x, table, dh, pos);
  } else {
    rotate_all<c10::BFloat16>(x, table, dh, pos);
  }
}

void check_rotated(const at::Tensor& x, const char* name, const at::Tensor& cos_sin, int64_t T) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 3, name, " must be [.., T, heads, Dh], got ", x.dim(), " dims");
  TORCH_CHECK(x.size(-1) == cos_sin.size(1), name, " has head dim ", x.size(-1), " but cos_sin rows have ",
              cos_sin.size(1), " entries");
  TORCH_CHECK(x.size(-3) == T, name, " has ", x.size(-3), " tokens (dim -3) but positions has ", T);
  TORCH_CHECK(x.device() == cos_sin.device(), name, " and cos_sin must be on the same device");
}

}  // namespace

void rope_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_sin, const at::Tensor& positions) {
  GPTOSS_CHECK_DIM(cos_sin, 2);
  GPTOSS_CHECK_DTYPE(cos_sin, at::kFloat);
  GPTOSS_CHECK_DIM(positions, 1);
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "positions must be int64 or int32, got ", positions.scalar_type());
  const int64_t dh = cos_sin.size(1), P = cos_sin.size(0), T = positions.size(0);
  TORCH_CHECK(dh % 2 == 0, "cos_sin rows must have an even number of entries, got ", dh);
  check_rotated(q, "q", cos_sin, T);
  check_rotated(k, "k", cos_sin, T);
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(p[t] >= 0 && p[t] < P, "positions[", t, "] = ", p[t], " is out of range for cos_sin with ", P,
                " rows");
  const at::Tensor table = cos_sin.contiguous();
  rotate(q, table.data_ptr<float>(), dh, p);
  rotate(k, table.data_ptr<float>(), dh, p);
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("rope_", &gptoss::rope_cpu); }
