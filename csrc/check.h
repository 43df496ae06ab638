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

}  // namespace gptoss
