// renoise_ on the GPU: device code only (no torch). One block per row (the row's
// count of random tokens is a block sum); each thread takes positions
// threadIdx.x, threadIdx.x + blockDim.x, ... A frozen row is left untouched.
// A position not accepted gets renoise_'s uniform token (common/noise.h,
// "Re-noising"), a pure function of (seed, offset, b * L + l): integer
// arithmetic only, the same tokens as every other backend.
#pragma once

#include <cstdint>

#include "../common/noise.h"
#include "select.cuh"  // Rows, block_sum, kSelectThreads

namespace dmkernels {
namespace cuda {

template <typename X, typename S>
__global__ void __launch_bounds__(kSelectThreads)
    renoise_kernel(X* __restrict__ canvas, int64_t cs0, int64_t cs1, Rows<S> sample, Rows<bool> accept,
                   const bool* __restrict__ frozen, int64_t fs0, int64_t L, uint64_t vocab, uint64_t seed,
                   uint64_t offset, const int64_t* __restrict__ rng, int64_t* __restrict__ noised) {
  __shared__ int64_t scratch[32];
  const int64_t b = blockIdx.x;
  if (frozen != nullptr && frozen[b * fs0]) {  // uniform across the block: no thread reaches block_sum
    if (threadIdx.x == 0) noised[b] = 0;
    return;
  }
  // (seed, offset) read on the device when given, so a captured graph replays fresh tokens.
  const NoiseKey key = rng != nullptr ? make_noise_key(static_cast<uint64_t>(rng[0]), static_cast<uint64_t>(rng[1]))
                                      : make_noise_key(seed, offset);
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    X* cell = canvas + b * cs0 + i * cs1;
    if (accept.at(b, i)) {
      *cell = static_cast<X>(sample.at(b, i));
    } else {
      *cell = static_cast<X>(uniform_token(key, static_cast<uint64_t>(b * L + i), vocab));
      ++count;
    }
  }
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) noised[b] = count;
}

}  // namespace cuda
}  // namespace dmkernels
