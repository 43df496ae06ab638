// The many-rows path of the linear kernels whose weights are not float32 (linear.cpp, linear_q8.cpp):
// W widened to float32 a block of rows at a time, into a buffer that stays in cache, and multiplied
// with at::mm (sgemm).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace gptoss {

// W rows widened to fp32 per sgemm call (about 2.9 MB of fp32 at in = 2880: the cache keeps it).
constexpr int64_t kWidenBlockBytes = 3 << 20;

// y [rows, out] = x [rows, in] (float32, contiguous) · Wᵀ, where widen(j, n, dst) writes rows
// [j, j + n) of W as float32 into dst [n, in], a block of about kWidenBlockBytes at a time.
template <typename Widen>
inline void widened_mm(const at::Tensor& x, int64_t out_features, at::Tensor& y, Widen&& widen) {
  const int64_t in = x.size(1);
  const int64_t block = std::min(out_features, std::max<int64_t>(64, kWidenBlockBytes / (4 * in)));
  at::Tensor buffer = at::empty({block, in}, x.options());
  for (int64_t j = 0; j < out_features; j += block) {
    const int64_t n = std::min(block, out_features - j);
    widen(j, n, buffer.data_ptr<float>());
    at::Tensor y_block = y.narrow(1, j, n);
    at::mm_out(y_block, x, buffer.narrow(0, 0, n).t());
  }
}

}  // namespace gptoss
