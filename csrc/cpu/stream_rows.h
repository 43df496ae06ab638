// The lockstep row streams shared by the few-rows linear kernels (linear.cpp, linear_q8.cpp).
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>

namespace gptoss {

// Rows of x up to which the streaming kernels beat widening + sgemm (measured on the 2-core AVX2 box,
// see the crossover in the report: bf16 [201088, 2880] and [5120, 2880]).
constexpr int64_t kStreamMaxRows = 8;
// Each thread's share of W must be large enough to amortise the fork (bytes of weights per task).
constexpr int64_t kMinTaskBytes = 1 << 18;

// Runs each thread's range of output rows [begin, end) as S sub-ranges in lockstep: step i calls
// use(w_rows, biases, outputs, output_strides) for row begin + s·q + i of each stream s. A stream
// that has run out of rows re-reads stream 0's row and writes to a spare slot (stride 1, room for
// kStreamMaxRows rows of x).
template <int S, typename W, typename Use>
inline void for_stream_rows(int64_t out_features, int64_t grain, const W* w, int64_t ldw, const float* bias,
                            float* y, Use&& use) {
  at::parallel_for(0, out_features, grain, [&](int64_t begin, int64_t end) {
    const int64_t q = (end - begin + S - 1) / S;  // rows per stream; the last may have fewer
    float spare[kStreamMaxRows];
    for (int64_t i = 0; i < q; ++i) {
      const W* wr[S];
      float b[S], *yr[S];
      int64_t ldy[S];
      for (int s = 0; s < S; ++s) {
        const int64_t j = begin + s * q + i;
        const bool here = j < end;
        wr[s] = w + (here ? j : begin + i) * ldw;
        b[s] = here && bias ? bias[j] : 0.0f;
        yr[s] = here ? y + j : spare;
        ldy[s] = here ? out_features : 1;
      }
      use(wr, b, yr, ldy);
    }
  });
}

}  // namespace gptoss
