// Grouped-query attention with per-head sink logits and an optional sliding window, on CPU.
//
// q [B, T, H, Dh] (float32, or bfloat16 upcast once), k/v [B, K, S, Dh] (bfloat16 or float32, any
// strides with a unit last stride: a slice of a growing cache is read in place), sinks [H],
// q_pos [T], k_pos [S] (int64; -1 = empty slot, any order). Output [B, T, H, Dh] float32.
//
// One task = (batch, kv head, tile of query tokens). Its rows are the G query heads sharing that kv
// head for each token of the tile, so every key/value row is loaded once for all of them. Keys are
// visited in tiles of kKeyTile with an online (flash-attention) softmax per row: the running max m
// starts at the sink logit S_h and the running denominator l at exp(S_h − m) = 1, which is exactly
// the sink's contribution (it has no value, so the accumulator starts at 0). Memory per task is
// O(rows · (kKeyTile + Dh)), independent of T·S. A row that never sees a key ends with acc = 0, l = 1:
// an exact 0. Key tiles are summarised once (min/max valid position, all slots valid?) so a tile no
// query of the task can see is skipped before any arithmetic, and a tile every key of which a token
// sees needs no per-key mask. All arithmetic is float32 with AVX2+FMA kernels (bf16 rows widened in
// registers) and a scalar fallback.
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../check.h"
#include "vec.h"

namespace gptoss {
namespace {

constexpr int64_t kKeyTile = 64;    // keys per tile; a multiple of 8 (scores rows are padded to it)
constexpr int64_t kRowTarget = 64;  // query rows (tokens × grouped heads) per task
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#if GPTOSS_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) { return load_bf16x8(p); }

// [Σ x0, Σ x1, .., Σ x7] (each sum over the 8 lanes of one input).
inline __m256 reduce8(__m256 x0, __m256 x1, __m256 x2, __m256 x3, __m256 x4, __m256 x5, __m256 x6, __m256 x7) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(x0, x1), _mm256_hadd_ps(x2, x3));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(x4, x5), _mm256_hadd_ps(x6, x7));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// e^x for x ≤ 0 (the softmax only exponentiates differences to the running max). Cody–Waite
// reduction x = n·ln2 + r, |r| ≤ ln2/2, a degree-7 polynomial (Cephes expf coefficients, Horner with
// FMA), then ·2^n as two exact power-of-two factors so results in the subnormal range are rounded
// once, like a libm exp. NaN (from −inf − (−inf)) and x < −120 give 0. Measured against a float64 exp
// over every float in [−104, 0]: at most 1.02 ulp off, relative error ≤ 1.41u (u = 2^−24) for normal
// results (the tests allow 3u).
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-120.0f));  // maxps returns the second operand for NaN
  x = _mm256_min_ps(x, _mm256_set1_ps(0.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-173, 0]
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, f1), f2);
}
#endif

// s[i·kKeyTile + j] = scale · q_i·k_j for rows i < nrows and keys j < n (k_j = k + j·ks).
template <typename KT>
void score_tile(const float* const* qrows, int64_t nrows, const KT* k, int64_t ks, int64_t n, int64_t dh,
                float scale, float* s) {
#if GPTOSS_AVX2
  // Blocks of 4 rows × 2 keys: 8 accumulators, 6 loads per 8 FMAs; out-of-range rows/keys of a
  // partial block repeat the last one and are not stored.
  const int64_t dh8 = dh & ~int64_t(7);
  for (int64_t i0 = 0; i0 < nrows; i0 += 4) {
    const float* q[4];
    for (int i = 0; i < 4; ++i) q[i] = qrows[std::min(i0 + i, nrows - 1)];
    for (int64_t j0 = 0; j0 < n; j0 += 2) {
      const KT* ka = k + j0 * ks;
      const KT* kb = k + std::min(j0 + 1, n - 1) * ks;
      __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
      for (int64_t c = 0; c < dh8; c += 8) {
        const __m256 x = load8(ka + c), y = load8(kb + c);
        __m256 qv = _mm256_loadu_ps(q[0] + c);
        a00 = _mm256_fmadd_ps(qv, x, a00);
        a01 = _mm256_fmadd_ps(qv, y, a01);
        qv = _mm256_loadu_ps(q[1] + c);
        a10 = _mm256_fmadd_ps(qv, x, a10);
        a11 = _mm256_fmadd_ps(qv, y, a11);
        qv = _mm256_loadu_ps(q[2] + c);
        a20 = _mm256_fmadd_ps(qv, x, a20);
        a21 = _mm256_fmadd_ps(qv, y, a21);
        qv = _mm256_loadu_ps(q[3] + c);
        a30 = _mm256_fmadd_ps(qv, x, a30);
        a31 = _mm256_fmadd_ps(qv, y, a31);
      }
      const __m256 sums = reduce8(a00, a01, a10, a11, a20, a21, a30, a31);  // [q0·ka, q0·kb, q1·ka, ..]
      if (dh8 == dh && i0 + 4 <= nrows && j0 + 2 <= n) {  // full block: store the 4 score pairs directly
        const __m256 sc = _mm256_mul_ps(sums, _mm256_set1_ps(scale));
        const __m128 lo = _mm256_castps256_ps128(sc), hi = _mm256_extractf128_ps(sc, 1);
        float* out = s + i0 * kKeyTile + j0;
        _mm_storel_pi(reinterpret_cast<__m64*>(out), lo);
        _mm_storeh_pi(reinterpret_cast<__m64*>(out + kKeyTile), lo);
        _mm_storel_pi(reinterpret_cast<__m64*>(out + 2 * kKeyTile), hi);
        _mm_storeh_pi(reinterpret_cast<__m64*>(out + 3 * kKeyTile), hi);
        continue;
      }
      alignas(32) float dot[8];
      _mm256_store_ps(dot, sums);
      for (int64_t c = dh8; c < dh; ++c) {
        const float x = static_cast<float>(ka[c]), y = static_cast<float>(kb[c]);
        for (int i = 0; i < 4; ++i) {
          dot[2 * i] += q[i][c] * x;
          dot[2 * i + 1] += q[i][c] * y;
        }
      }
      for (int64_t i = 0; i < 4 && i0 + i < nrows; ++i) {
        s[(i0 + i) * kKeyTile + j0] = dot[2 * i] * scale;
        if (j0 + 1 < n) s[(i0 + i) * kKeyTile + j0 + 1] = dot[2 * i + 1] * scale;
      }
    }
  }
#else
  for (int64_t i = 0; i < nrows; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float dot = 0.0f;
      for (int64_t c = 0; c < dh; ++c) dot += qrows[i][c] * static_cast<float>(k[j * ks + c]);
      s[i * kKeyTile + j] = dot * scale;
    }
#endif
}

// Online-softmax step of one row over a tile of n scores (−inf = masked): updates the running max m
// and denominator l, overwrites s[0..n) with p_j = exp(s_j − m_new) and returns alpha = exp(m − m_new),
// the factor the row's accumulator must be rescaled by.
float softmax_step(float* s, int64_t n, float& m, float& l) {
  float tile_max = kNegInf;
#if GPTOSS_AVX2
  const int64_t n8 = (n + 7) & ~int64_t(7);  // ≤ kKeyTile: pad with −inf (exp gives 0)
  for (int64_t j = n; j < n8; ++j) s[j] = kNegInf;
  __m256 mv = _mm256_set1_ps(kNegInf);
  for (int64_t j = 0; j < n8; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + j));
  tile_max = hmax(mv);
#else
  for (int64_t j = 0; j < n; ++j) tile_max = std::max(tile_max, s[j]);
#endif
  const float m_new = std::max(m, tile_max);
  const float alpha = m_new == m ? 1.0f : std::exp(m - m_new);  // == also covers −inf == −inf
  float sum = 0.0f;
#if GPTOSS_AVX2
  const __m256 mb = _mm256_set1_ps(m_new);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 p = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), mb));
    _mm256_storeu_ps(s + j, p);
    acc = _mm256_add_ps(acc, p);
  }
  sum = hsum(acc);
#else
  for (int64_t j = 0; j < n; ++j) {
    const float p = s[j] == kNegInf ? 0.0f : std::exp(s[j] - m_new);
    s[j] = p;
    sum += p;
  }
#endif
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

// acc_i = alpha_i·acc_i + Σ_{j<n} p_i[j]·v_j for RB rows (v_j = v + j·vs).
template <int RB, typename VT>
void value_block(float* const* acc, const float* const* p, const float* alpha, const VT* v, int64_t vs, int64_t n,
                 int64_t dh) {
  int64_t d = 0;
#if GPTOSS_AVX2
  for (; d + 16 <= dh; d += 16) {
    __m256 a[RB][2];
    for (int i = 0; i < RB; ++i) {
      const __m256 f = _mm256_set1_ps(alpha[i]);
      a[i][0] = _mm256_mul_ps(_mm256_loadu_ps(acc[i] + d), f);
      a[i][1] = _mm256_mul_ps(_mm256_loadu_ps(acc[i] + d + 8), f);
    }
    for (int64_t j = 0; j < n; ++j) {
      const __m256 x = load8(v + j * vs + d), y = load8(v + j * vs + d + 8);
      for (int i = 0; i < RB; ++i) {
        const __m256 w = _mm256_broadcast_ss(p[i] + j);
        a[i][0] = _mm256_fmadd_ps(w, x, a[i][0]);
        a[i][1] = _mm256_fmadd_ps(w, y, a[i][1]);
      }
    }
    for (int i = 0; i < RB; ++i) {
      _mm256_storeu_ps(acc[i] + d, a[i][0]);
      _mm256_storeu_ps(acc[i] + d + 8, a[i][1]);
    }
  }
  for (; d + 8 <= dh; d += 8) {
    __m256 a[RB];
    for (int i = 0; i < RB; ++i) a[i] = _mm256_mul_ps(_mm256_loadu_ps(acc[i] + d), _mm256_set1_ps(alpha[i]));
    for (int64_t j = 0; j < n; ++j) {
      const __m256 x = load8(v + j * vs + d);
      for (int i = 0; i < RB; ++i) a[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p[i] + j), x, a[i]);
    }
    for (int i = 0; i < RB; ++i) _mm256_storeu_ps(acc[i] + d, a[i]);
  }
#endif
  for (; d < dh; ++d)
    for (int i = 0; i < RB; ++i) {
      float a = acc[i][d] * alpha[i];
      for (int64_t j = 0; j < n; ++j) a += p[i][j] * static_cast<float>(v[j * vs + d]);
      acc[i][d] = a;
    }
}

template <typename VT>
void value_tile(float* const* acc, const float* const* p, const float* alpha, int64_t nrows, const VT* v, int64_t vs,
                int64_t n, int64_t dh) {
  int64_t i = 0;
  for (; i + 4 <= nrows; i += 4) value_block<4>(acc + i, p + i, alpha + i, v, vs, n, dh);
  switch (nrows - i) {
    case 3: value_block<3>(acc + i, p + i, alpha + i, v, vs, n, dh); break;
    case 2: value_block<2>(acc + i, p + i, alpha + i, v, vs, n, dh); break;
    case 1: value_block<1>(acc + i, p + i, alpha + i, v, vs, n, dh); break;
    default: break;
  }
}

template <typename KT, typename VT>
struct Problem {
  const float* q;  // [B, T, H, Dh] contiguous
  const KT* k;
  int64_t k_sb, k_sh, k_ss;  // element strides of k over (batch, kv head, slot)
  const VT* v;
  int64_t v_sb, v_sh, v_ss;
  const float* sinks;
  const int64_t* q_pos;
  const int64_t* k_pos;
  // Per key tile, over its valid slots (k_pos ≥ 0): min and max position (min > max when none) and
  // whether every slot is valid.
  const int64_t* tile_lo;
  const int64_t* tile_hi;
  const uint8_t* tile_dense;
  float* out;
  int64_t B, T, H, K, G, S, Dh, window, tq;
  float scale;
};

struct Scratch {
  std::vector<float> scores, acc, m, l, alpha;
  std::vector<const float*> qrow, arow_q, arow_p;
  std::vector<float*> arow_acc;
  std::vector<int64_t> active;
  std::vector<uint8_t> masked;
  explicit Scratch(int64_t rows, int64_t dh)
      : scores(rows * kKeyTile), acc(rows * dh), m(rows), l(rows), alpha(rows), qrow(rows), arow_q(rows),
        arow_p(rows), arow_acc(rows), active(rows), masked(rows) {}
};

template <typename KT, typename VT>
void attend(const Problem<KT, VT>& P, int64_t b, int64_t kvh, int64_t qt, Scratch& w) {
  const int64_t G = P.G, Dh = P.Dh, window = P.window;
  const int64_t t0 = qt * P.tq, nt = std::min(P.tq, P.T - t0), rows = nt * G;
  int64_t q_lo = std::numeric_limits<int64_t>::max(), q_hi = std::numeric_limits<int64_t>::min();
  for (int64_t t = 0; t < nt; ++t) {
    q_lo = std::min(q_lo, P.q_pos[t0 + t]);
    q_hi = std::max(q_hi, P.q_pos[t0 + t]);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r = t * G + g;
      w.qrow[r] = P.q + ((b * P.T + t0 + t) * P.H + kvh * G + g) * Dh;
      w.m[r] = P.sinks[kvh * G + g];  // the sink seeds the running max ...
      w.l[r] = 1.0f;                  // ... and contributes exp(S_h − m) = 1 to the denominator
    }
  }
  std::fill(w.acc.begin(), w.acc.begin() + rows * Dh, 0.0f);
  const KT* kb = P.k + b * P.k_sb + kvh * P.k_sh;
  const VT* vb = P.v + b * P.v_sb + kvh * P.v_sh;
  const int64_t tiles = (P.S + kKeyTile - 1) / kKeyTile;
  for (int64_t kt = 0; kt < tiles; ++kt) {
    const int64_t lo = P.tile_lo[kt], hi = P.tile_hi[kt];
    if (lo > hi || lo > q_hi || (window > 0 && q_lo - hi >= window)) continue;  // nobody here sees it
    const int64_t j0 = kt * kKeyTile, n = std::min(kKeyTile, P.S - j0);
    int64_t na = 0;
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t qp = P.q_pos[t0 + t];
      if (lo > qp || (window > 0 && qp - hi >= window)) continue;  // this token sees none of the tile
      const bool all = P.tile_dense[kt] && hi <= qp && (window <= 0 || qp - lo < window);
      for (int64_t g = 0; g < G; ++g) {
        w.active[na] = t * G + g;
        w.masked[na] = !all;
        w.arow_q[na] = w.qrow[t * G + g];
        ++na;
      }
    }
    if (na == 0) continue;
    float* s = w.scores.data();
    score_tile(w.arow_q.data(), na, kb + j0 * P.k_ss, P.k_ss, n, Dh, P.scale, s);
    for (int64_t a = 0; a < na; ++a) {
      const int64_t r = w.active[a];
      float* sa = s + a * kKeyTile;
      if (w.masked[a]) {
        const int64_t qp = P.q_pos[t0 + r / G];
        for (int64_t j = 0; j < n; ++j) {
          const int64_t kp = P.k_pos[j0 + j];
          if (kp < 0 || kp > qp || (window > 0 && qp - kp >= window)) sa[j] = kNegInf;
        }
      }
      w.alpha[a] = softmax_step(sa, n, w.m[r], w.l[r]);
      w.arow_p[a] = sa;
      w.arow_acc[a] = w.acc.data() + r * Dh;
    }
    value_tile(w.arow_acc.data(), w.arow_p.data(), w.alpha.data(), na, vb + j0 * P.v_ss, P.v_ss, n, Dh);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = P.out + (w.qrow[r] - P.q);  // out has q's layout
    const float* a = w.acc.data() + r * Dh;
    const float l = w.l[r];  // ≥ 1: the term at the running max is exp(0) = 1
    for (int64_t d = 0; d < Dh; ++d) o[d] = a[d] / l;
  }
}

// Per key tile of one sequence, over its valid slots (k_pos ≥ 0): min and max position and whether
// every slot is valid (Problem's tile_* point into it).
struct KeyTiles {
  std::vector<int64_t> lo, hi;
  std::vector<uint8_t> dense;
};

template <typename KT, typename VT>
void summarise_key_tiles(Problem<KT, VT>& P, KeyTiles& tiles) {
  const int64_t n = (P.S + kKeyTile - 1) / kKeyTile;
  tiles.lo.assign(n, std::numeric_limits<int64_t>::max());
  tiles.hi.assign(n, std::numeric_limits<int64_t>::min());
  tiles.dense.assign(n, 1);
  for (int64_t j = 0; j < P.S; ++j) {
    const int64_t p = P.k_pos[j], t = j / kKeyTile;
    if (p < 0) {
      tiles.dense[t] = 0;
    } else {
      tiles.lo[t] = std::min(tiles.lo[t], p);
      tiles.hi[t] = std::max(tiles.hi[t], p);
    }
  }
  P.tile_lo = tiles.lo.data(), P.tile_hi = tiles.hi.data(), P.tile_dense = tiles.dense.data();
}

// Runs every (problem, batch·kv head, query tile) task of several problems (the sequences of one
// varlen call, or the one problem of a batched call) in one parallel loop.
template <typename KT, typename VT>
void run(const std::vector<Problem<KT, VT>>& problems) {
  struct Task {
    int64_t problem, bk, qt;
  };
  std::vector<Task> tasks;
  int64_t rows = 1;
  for (int64_t p = 0; p < static_cast<int64_t>(problems.size()); ++p) {
    const Problem<KT, VT>& P = problems[p];
    const int64_t q_tiles = (P.T + P.tq - 1) / P.tq;
    rows = std::max(rows, P.tq * P.G);
    // Query tiles in the order 0, n−1, 1, n−2, ...: causal tiles grow in cost with their index, so
    // any contiguous run of tasks (one thread's share) mixes cheap and expensive ones.
    for (int64_t bk = 0; bk < P.B * P.K; ++bk)
      for (int64_t j = 0; j < q_tiles; ++j) tasks.push_back({p, bk, j % 2 == 0 ? j / 2 : q_tiles - 1 - j / 2});
  }
  if (tasks.empty()) return;
  const int64_t Dh = problems[0].Dh;
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    Scratch w(rows, Dh);
    for (int64_t i = begin; i < end; ++i) {
      const Task& t = tasks[i];
      const Problem<KT, VT>& P = problems[t.problem];
      attend(P, t.bk / P.K, t.bk % P.K, t.qt, w);
    }
  });
}

// q [B, T, H, Dh] float32 contiguous (rows of `out` alike); k, v [B, K, S, Dh] with a unit last stride.
template <typename KT, typename VT>
Problem<KT, VT> make_problem(const float* q, float* out, int64_t B, int64_t T, int64_t H, int64_t Dh,
                             const at::Tensor& k, const at::Tensor& v, const float* sinks, double sm_scale,
                             int64_t window, const int64_t* q_pos, const int64_t* k_pos) {
  Problem<KT, VT> P;
  P.B = B, P.T = T, P.H = H, P.Dh = Dh, P.K = k.size(1), P.S = k.size(2);
  P.G = P.H / P.K, P.window = window, P.scale = static_cast<float>(sm_scale);
  P.tq = std::max<int64_t>(1, std::min<int64_t>(P.T, (kRowTarget + P.G - 1) / P.G));
  P.q = q, P.out = out, P.sinks = sinks;
  P.k = k.data_ptr<KT>(), P.k_sb = k.stride(0), P.k_sh = k.stride(1), P.k_ss = k.stride(2);
  P.v = v.data_ptr<VT>(), P.v_sb = v.stride(0), P.v_sh = v.stride(1), P.v_ss = v.stride(2);
  P.q_pos = q_pos, P.k_pos = k_pos;
  return P;
}

template <typename KT, typename VT>
void dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks, double sm_scale,
              int64_t window, const at::Tensor& q_pos, const at::Tensor& k_pos, at::Tensor& out) {
  std::vector<Problem<KT, VT>> problems{make_problem<KT, VT>(
      q.data_ptr<float>(), out.data_ptr<float>(), q.size(0), q.size(1), q.size(2), q.size(3), k, v,
      sinks.data_ptr<float>(), sm_scale, window, q_pos.data_ptr<int64_t>(), k_pos.data_ptr<int64_t>())};
  KeyTiles tiles;
  summarise_key_tiles(problems[0], tiles);
  run(problems);
}

// Sequence i: rows [offset_i, offset_i + q_lengths[i]) of q [T, H, Dh] (float32 contiguous) against
// ks[i], vs[i] [1, K, S_i, Dh] with positions k_pos[i] [S_i] (int64 contiguous).
template <typename KT, typename VT>
void dispatch_varlen(const at::Tensor& q, const std::vector<at::Tensor>& ks, const std::vector<at::Tensor>& vs,
                     const at::Tensor& sinks, double sm_scale, int64_t window, const at::Tensor& q_pos,
                     const std::vector<at::Tensor>& k_pos, at::IntArrayRef q_lengths, at::Tensor& out) {
  const int64_t H = q.size(1), Dh = q.size(2), n = static_cast<int64_t>(ks.size());
  std::vector<Problem<KT, VT>> problems;
  std::vector<KeyTiles> tiles(n);  // sized up front: the problems point into it
  int64_t offset = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t first = offset * H * Dh;
    problems.push_back(make_problem<KT, VT>(q.data_ptr<float>() + first, out.data_ptr<float>() + first, 1,
                                            q_lengths[i], H, Dh, ks[i], vs[i], sinks.data_ptr<float>(), sm_scale,
                                            window, q_pos.data_ptr<int64_t>() + offset, k_pos[i].data_ptr<int64_t>()));
    summarise_key_tiles(problems.back(), tiles[i]);
    offset += q_lengths[i];
  }
  run(problems);
}

}  // namespace

at::Tensor sdpa_sinks_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks,
                          double sm_scale, int64_t sliding_window, const at::Tensor& q_pos, const at::Tensor& k_pos) {
  GPTOSS_CHECK_DIM(q, 4);
  GPTOSS_CHECK_DIM(k, 4);
  GPTOSS_CHECK_DIM(v, 4);
  GPTOSS_CHECK_DIM(sinks, 1);
  GPTOSS_CHECK_DIM(q_pos, 1);
  GPTOSS_CHECK_DIM(k_pos, 1);
  for (const at::Tensor* t : {&k, &v, &sinks, &q_pos, &k_pos})
    TORCH_CHECK(t->device() == q.device(), "q, k, v, sinks, q_pos and k_pos must be on the same device");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dh = q.size(3), K = k.size(1), S = k.size(2);
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "q must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16,
              "k must be float32 or bfloat16, got ", k.scalar_type());
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kBFloat16,
              "v must be float32 or bfloat16, got ", v.scalar_type());
  TORCH_CHECK(k.size(0) == B && k.size(3) == Dh, "k must be [B, K, S, Dh] = [", B, ", K, S, ", Dh, "], got ",
              k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(K > 0 && H % K == 0, "q has ", H, " heads, not a multiple of the ", K, " kv heads of k");
  TORCH_CHECK(sinks.size(0) == H, "sinks has ", sinks.size(0), " entries but q has ", H, " heads");
  TORCH_CHECK(q_pos.size(0) == T, "q_pos has ", q_pos.size(0), " entries but q has ", T, " tokens");
  TORCH_CHECK(k_pos.size(0) == S, "k_pos has ", k_pos.size(0), " entries but k has ", S, " slots");
  TORCH_CHECK(q_pos.scalar_type() == at::kLong || q_pos.scalar_type() == at::kInt,
              "q_pos must be int64 or int32, got ", q_pos.scalar_type());
  TORCH_CHECK(k_pos.scalar_type() == at::kLong || k_pos.scalar_type() == at::kInt,
              "k_pos must be int64 or int32, got ", k_pos.scalar_type());

  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();  // a cache slice is read where it lies
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  const at::Tensor sf = sinks.to(at::kFloat).contiguous();
  const at::Tensor qp = q_pos.to(at::kLong).contiguous(), kp = k_pos.to(at::kLong).contiguous();
  at::Tensor out = at::empty({B, T, H, Dh}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const bool kbf = k.scalar_type() == at::kBFloat16, vbf = v.scalar_type() == at::kBFloat16;
  const int64_t w = sliding_window;
  if (kbf && vbf) {
    dispatch<c10::BFloat16, c10::BFloat16>(qf, kc, vc, sf, sm_scale, w, qp, kp, out);
  } else if (kbf) {
    dispatch<c10::BFloat16, float>(qf, kc, vc, sf, sm_scale, w, qp, kp, out);
  } else if (vbf) {
    dispatch<float, c10::BFloat16>(qf, kc, vc, sf, sm_scale, w, qp, kp, out);
  } else {
    dispatch<float, float>(qf, kc, vc, sf, sm_scale, w, qp, kp, out);
  }
  return out;
}


// Several sequences in one call: q [T, H, Dh] holds their query tokens back to back (q_lengths, summing
// to T; positions q_pos [T]); sequence i attends to its own keys k[i], v[i] [K, S_i, Dh] (any strides
// with a unit last stride, so cache slices are read in place) with positions k_pos[i] [S_i]. Each
// sequence's rows come out as sdpa_sinks gives them for that sequence alone; all (sequence, kv head,
// query tile) tasks share one parallel loop.
at::Tensor sdpa_sinks_varlen_cpu(const at::Tensor& q, at::TensorList k, at::TensorList v, const at::Tensor& sinks,
                                 double sm_scale, int64_t sliding_window, const at::Tensor& q_pos,
                                 at::TensorList k_pos, at::IntArrayRef q_lengths) {
  GPTOSS_CHECK_DIM(q, 3);
  GPTOSS_CHECK_DIM(sinks, 1);
  GPTOSS_CHECK_DIM(q_pos, 1);
  const int64_t T = q.size(0), H = q.size(1), Dh = q.size(2), n = static_cast<int64_t>(q_lengths.size());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "q must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(k.size()) == n && static_cast<int64_t>(v.size()) == n &&
                  static_cast<int64_t>(k_pos.size()) == n,
              "k, v and k_pos must have one entry per sequence (", n, " q_lengths), got ", k.size(), ", ", v.size(),
              " and ", k_pos.size());
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(q_lengths[i] >= 0, "q_lengths[", i, "] is negative: ", q_lengths[i]);
    total += q_lengths[i];
  }
  TORCH_CHECK(total == T, "q_lengths sum to ", total, " but q has ", T, " tokens");
  TORCH_CHECK(q_pos.size(0) == T, "q_pos has ", q_pos.size(0), " entries but q has ", T, " tokens");
  TORCH_CHECK(q_pos.scalar_type() == at::kLong || q_pos.scalar_type() == at::kInt,
              "q_pos must be int64 or int32, got ", q_pos.scalar_type());
  TORCH_CHECK(sinks.size(0) == H, "sinks has ", sinks.size(0), " entries but q has ", H, " heads");
  for (const at::Tensor* t : {&sinks, &q_pos})
    TORCH_CHECK(t->device() == q.device(), "q, sinks and q_pos must be on the same device");
  std::vector<at::Tensor> ks, vs, kps;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor &ki = k[i], &vi = v[i], &pi = k_pos[i];
    TORCH_CHECK(ki.dim() == 3, "k[", i, "] must be [K, S, Dh], got ", ki.sizes());
    TORCH_CHECK(ki.size(2) == Dh, "k[", i, "] must have head dim ", Dh, " (q's), got ", ki.sizes());
    TORCH_CHECK(ki.size(0) > 0 && H % ki.size(0) == 0, "q has ", H, " heads, not a multiple of the ", ki.size(0),
                " kv heads of k[", i, "]");
    TORCH_CHECK(ki.size(0) == k[0].size(0), "k[", i, "] has ", ki.size(0), " kv heads but k[0] has ", k[0].size(0));
    TORCH_CHECK(vi.sizes() == ki.sizes(), "v[", i, "] must have k[", i, "]'s shape ", ki.sizes(), ", got ",
                vi.sizes());
    TORCH_CHECK(ki.scalar_type() == k[0].scalar_type() && vi.scalar_type() == v[0].scalar_type(),
                "every k (and every v) must have one dtype: k[", i, "] is ", ki.scalar_type(), ", v[", i, "] is ",
                vi.scalar_type());
    TORCH_CHECK(pi.dim() == 1 && pi.size(0) == ki.size(1), "k_pos[", i, "] must have ", ki.size(1),
                " entries (k[", i, "]'s slots), got ", pi.sizes());
    TORCH_CHECK(pi.scalar_type() == at::kLong || pi.scalar_type() == at::kInt, "k_pos[", i,
                "] must be int64 or int32, got ", pi.scalar_type());
    for (const at::Tensor* t : {&ki, &vi, &pi})
      TORCH_CHECK(t->device() == q.device(), "k[", i, "], v[", i, "] and k_pos[", i, "] must be on q's device");
    ks.push_back((ki.stride(2) == 1 ? ki : ki.contiguous()).unsqueeze(0));  // [1, K, S, Dh]
    vs.push_back((vi.stride(2) == 1 ? vi : vi.contiguous()).unsqueeze(0));
    kps.push_back(pi.to(at::kLong).contiguous());
  }
  at::Tensor out = at::empty({T, H, Dh}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const at::ScalarType kt = k[0].scalar_type(), vt = v[0].scalar_type();
  TORCH_CHECK(kt == at::kFloat || kt == at::kBFloat16, "k must be float32 or bfloat16, got ", kt);
  TORCH_CHECK(vt == at::kFloat || vt == at::kBFloat16, "v must be float32 or bfloat16, got ", vt);
  const at::Tensor qf = q.to(at::kFloat).contiguous(), sf = sinks.to(at::kFloat).contiguous();
  const at::Tensor qp = q_pos.to(at::kLong).contiguous();
  const int64_t w = sliding_window;
  if (kt == at::kBFloat16 && vt == at::kBFloat16) {
    dispatch_varlen<c10::BFloat16, c10::BFloat16>(qf, ks, vs, sf, sm_scale, w, qp, kps, q_lengths, out);
  } else if (kt == at::kBFloat16) {
    dispatch_varlen<c10::BFloat16, float>(qf, ks, vs, sf, sm_scale, w, qp, kps, q_lengths, out);
  } else if (vt == at::kBFloat16) {
    dispatch_varlen<float, c10::BFloat16>(qf, ks, vs, sf, sm_scale, w, qp, kps, q_lengths, out);
  } else {
    dispatch_varlen<float, float>(qf, ks, vs, sf, sm_scale, w, qp, kps, q_lengths, out);
  }
  return out;
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) {
  m.impl("sdpa_sinks", &gptoss::sdpa_sinks_cpu);
  m.impl("sdpa_sinks_varlen", &gptoss::sdpa_sinks_varlen_cpu);
}
