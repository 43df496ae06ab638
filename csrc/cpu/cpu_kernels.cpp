// Which family of CPU kernels runs the ops for a compute dtype on this machine (vec.h: cpu_isa), for
// the load log, gptoss://model and bench. The AVX-512 BF16 and AMX kernels take bf16 work only.
#include <torch/library.h>

#include <string>

#include "vec.h"

namespace gptoss {

std::string cpu_kernels(at::ScalarType dtype) {
#if GPTOSS_HAVE_AVX512_BF16_KERNELS
  if (dtype == at::kBFloat16) {
    switch (cpu_isa()) {
      case CpuIsa::kAmx: return "amx";
      case CpuIsa::kAvx512Bf16: return "avx512_bf16";
      case CpuIsa::kAvx2: break;
    }
  }
#endif
  (void)dtype;
#if GPTOSS_AVX2
  return "avx2";
#else
  return "portable";
#endif
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CompositeExplicitAutograd, m) { m.impl("cpu_kernels", &gptoss::cpu_kernels); }
