// Input checks for host functions: TORCH_CHECK with the tensor's name in the message.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#include <vector>

#include "mxfp4.h"

#define GPTOSS_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define GPTOSS_CHECK_DTYPE(x, dtype) \
  TORCH_CHECK((x).scalar_type() == (dtype), #x " must be ", (dtype), ", got ", (x).scalar_type())
#define GPTOSS_CHECK_DIM(x, n) TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dims, got ", (x).dim())
#define GPTOSS_CHECK_SAME_DEVICE(x, y) \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device")

namespace gptoss {

// mxfp4_dequantize's arguments, checked the same way on every device; returns the output shape
// (blocks' shape with its last two dims [nb, 16] folded into nb·32 values).
inline std::vector<int64_t> mxfp4_dequantize_out_shape(const at::Tensor& blocks, const at::Tensor& scales,
                                                       at::ScalarType dtype) {
  GPTOSS_CHECK_DTYPE(blocks, at::kByte);
  GPTOSS_CHECK_DTYPE(scales, at::kByte);
  TORCH_CHECK(blocks.dim() >= 2 && blocks.size(-1) == kMxfp4BlockBytes, "blocks must have shape [..., nb, ", kMxfp4BlockBytes,
              "], got ", blocks.sizes());
  TORCH_CHECK(scales.sizes() == blocks.sizes().slice(0, blocks.dim() - 1), "scales must have shape ",
              blocks.sizes().slice(0, blocks.dim() - 1), " (blocks without its last dim), got ", scales.sizes());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dtype must be float32 or bfloat16, got ", dtype);
  GPTOSS_CHECK_SAME_DEVICE(blocks, scales);
  std::vector<int64_t> out_shape(blocks.sizes().begin(), blocks.sizes().end() - 1);
  out_shape.back() *= kMxfp4Block;
  return out_shape;
}

// linear_q8's arguments, checked the same way on every device; returns the bias as contiguous float32
// (undefined without one).
inline at::Tensor check_linear_q8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                  const c10::optional<at::Tensor>& bias_opt) {
  GPTOSS_CHECK_DIM(qweight, 2);
  GPTOSS_CHECK_DTYPE(qweight, at::kChar);
  GPTOSS_CHECK_DTYPE(scales, at::kHalf);
  const int64_t in = qweight.size(1), out_features = qweight.size(0);
  TORCH_CHECK(in % 32 == 0, "qweight rows must hold whole blocks of 32 values, got ", in, " columns");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == out_features && scales.size(1) == in / 32,
              "scales must have shape [", out_features, ", ", in / 32, "] (one per block of 32), got ", scales.sizes());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "x rows must have ", in, " entries (qweight's columns), got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating-point tensor, got ", x.scalar_type());
  GPTOSS_CHECK_SAME_DEVICE(x, qweight);
  GPTOSS_CHECK_SAME_DEVICE(scales, qweight);
  if (!bias_opt.has_value() || !bias_opt->defined()) return at::Tensor();
  const at::Tensor& bias = *bias_opt;
  GPTOSS_CHECK_DIM(bias, 1);
  TORCH_CHECK(bias.size(0) == out_features, "bias has ", bias.size(0), " entries but qweight has ", out_features,
              " rows");
  TORCH_CHECK(at::isFloatingType(bias.scalar_type()), "bias must be a floating-point tensor, got ", bias.scalar_type());
  GPTOSS_CHECK_SAME_DEVICE(bias, qweight);
  return bias.to(at::kFloat).contiguous();
}

}  // namespace gptoss
