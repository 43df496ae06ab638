// Input checks for host functions: TORCH_CHECK with the tensor's name in the message.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#define GPTOSS_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define GPTOSS_CHECK_DTYPE(x, dtype) \
  TORCH_CHECK((x).scalar_type() == (dtype), #x " must be ", (dtype), ", got ", (x).scalar_type())
#define GPTOSS_CHECK_DIM(x, n) TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dims, got ", (x).dim())
#define GPTOSS_CHECK_SAME_DEVICE(x, y) \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device")
