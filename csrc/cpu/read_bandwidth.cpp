// The machine's read bandwidth as the decode kernels see it, for `bench`: the buffer is read by the
// intra-op threads, each thread's share as kStreams sub-ranges in lockstep (the access pattern of
// linear's and moe_mxfp4's few-token kernels). On the 2-core Sapphire Rapids VM this reads ~25-40%
// more per second than one stream per thread (a plain sum). Not a numeric op: no reference twin.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "../check.h"
#include "vec.h"

namespace gptoss {
namespace {

constexpr int kStreams = 4;
constexpr int64_t kStepBytes = 128;  // bytes of each stream per step

// Sum of the 64-bit words of kStreams ranges of `per_stream` bytes each (a multiple of kStepBytes).
uint64_t read_streams(const uint8_t* p, int64_t per_stream) {
#if GPTOSS_AVX2
  __m256i acc[kStreams];
  for (int s = 0; s < kStreams; ++s) acc[s] = _mm256_setzero_si256();
  for (int64_t i = 0; i < per_stream; i += kStepBytes) {
    for (int s = 0; s < kStreams; ++s) {
      const __m256i* q = reinterpret_cast<const __m256i*>(p + s * per_stream + i);
      acc[s] = _mm256_add_epi64(acc[s], _mm256_add_epi64(_mm256_add_epi64(_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)),
                                                         _mm256_add_epi64(_mm256_loadu_si256(q + 2), _mm256_loadu_si256(q + 3))));
    }
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3])));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
  uint64_t sum = 0;
  for (int64_t i = 0; i < per_stream; i += kStepBytes)
    for (int s = 0; s < kStreams; ++s)
      for (int64_t j = 0; j < kStepBytes; j += 8) {
        uint64_t word;
        std::memcpy(&word, p + s * per_stream + i + j, sizeof(word));
        sum += word;
      }
  return sum;
#endif
}

double read_bandwidth_cpu(const at::Tensor& buffer, int64_t repeats) {
  GPTOSS_CHECK_CONTIGUOUS(buffer);
  TORCH_CHECK(repeats > 0, "repeats must be positive, got ", repeats);
  const int64_t bytes = buffer.numel() * static_cast<int64_t>(buffer.element_size());
  const int64_t threads = at::get_num_threads(), share = kStreams * kStepBytes;
  const int64_t per_thread = bytes / threads / share * share;
  TORCH_CHECK(per_thread > 0, "buffer of ", bytes, " bytes is too small to read with ", threads, " threads");
  const auto* base = static_cast<const uint8_t*>(buffer.data_ptr());
  double best = 0.0;
  std::atomic<uint64_t> sink{0};  // a side effect of every read, so none is optimised away
  for (int64_t r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        sink += read_streams(base + t * per_thread, per_thread / kStreams);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(threads * per_thread) / seconds / 1e9);
  }
  return best;
}

}  // namespace
}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CPU, m) { m.impl("read_bandwidth", &gptoss::read_bandwidth_cpu); }
