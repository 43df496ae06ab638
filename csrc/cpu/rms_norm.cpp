// RMSNorm on CPU: one row per task, float32 accumulation, result in x's dtype.
#include <ATen/Parallel.h>
#include <cmath>

#include "../check.h"
#include "vec.h"

namespace gptoss {
namespace {

template <typename T>
void rms_norm_rows(const T* x, const float* scale, T* out, int64_t rows, int64_t dim, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * dim;
      T* yr = out + r * dim;
      double sum = 0.0;  // double keeps the mean exact enough for any row length
      for (int64_t i = 0; i < dim; ++i) {
        const float v = static_cast<float>(xr[i]);
        sum += static_cast<double>(v) * v;
      }
      const float inv = 1.0f / std::sqrt(static_cast<float>(sum / dim) + eps);
      for (int64_t i = 0; i < dim; ++i) yr[i] = static_cast<T>(static_cast<float>(xr[i]) * inv * scale[i]);
    }
  });
}

}  // namespace

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& scale, double eps) {
  TORCH_CHECK(x.dim() >= 1, "x must have at least one dim");
  GPTOSS_CHECK_DIM(scale, 1);
  TORCH_CHECK(scale.size(0) == x.size(-1), "scale has ", scale.size(0), " entries but x rows have ", x.size(-1));
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = scale.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t dim = x.size(-1), rows = dim ? xc.numel() / dim : 0;
  switch (x.scalar_type()) {
    case at::kFloat:
      rms_norm_rows(xc.data_ptr<float>(), sc.data_ptr<float>(), out.data_ptr<float>(), rows, dim, (float)eps);
      break;
    case at::kBFloat16:
      rms_norm_rows(xc.data_ptr<c10::BFloat16>(), sc.data_ptr<float>(), out.data_ptr<c10::BFloat16>(), rows, dim,
                    (float)eps);
      break;
    default:
      TORCH_CHECK(false, "x must be float32 or bfloat16, got ", x.scalar_type());
  }
  return out;
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("rms_norm", &gptoss::rms_norm_cpu); }
