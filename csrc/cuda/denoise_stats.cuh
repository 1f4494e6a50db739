// denoise_stats on the GPU, device code only (no torch): the sweep after
// token_stats' kernels (token_stats.cuh, run with tempered scores for the token
// and the entropy). Semantics: dmkernels/reference/denoise_stats.py.
//
// One block per row: z = x / T with __fdiv_rn (an IEEE division whatever the
// compiler flags; the sampler keeps its multiply by float32(1 / T)), rounded to
// the logits' type T as torch's `logits / T` is, stored to processed_out in
// its type U when kWrite, and the first argmax of z (each thread keeps its
// first maximum over increasing columns; the block reduces by value, then
// lowest column). The token written by token_stats decides the rest: -1 there
// (a frozen row or one without a distribution) makes the argmax -1, and a
// frozen row is not read or written at all.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/noise.h"

namespace dmkernels {
namespace cuda {

constexpr int kDenoiseThreads = 256;

// A float32 rounded to T and back (to nearest even: T's float constructor).
template <typename T>
__device__ __forceinline__ float round_to(float z) {
  return static_cast<float>(T(z));
}
template <>
__device__ __forceinline__ float round_to<float>(float z) {
  return z;
}

// (value, column) pairs: higher value, then lower column (INT64_MAX: none yet).
__device__ __forceinline__ void take_better(float& best, int64_t& col, float v, int64_t c) {
  if (v > best || (v == best && c < col)) {
    best = v;
    col = c;
  }
}

template <typename T, typename U, bool kWrite>
__global__ void __launch_bounds__(kDenoiseThreads)
    denoise_divide_kernel(const T* __restrict__ logits, const int64_t* __restrict__ x_offsets, U* __restrict__ out,
                          const int64_t* __restrict__ out_offsets, const int64_t* __restrict__ token,
                          const bool* __restrict__ frozen, const float* __restrict__ temperature_ptr,
                          float temperature, int64_t V, int64_t* __restrict__ argmax) {
  const int64_t row = blockIdx.x;
  if (frozen != nullptr && frozen[row]) {
    if (threadIdx.x == 0) argmax[row] = -1;
    return;
  }
  const int64_t tok = token[row];
  if (!kWrite && tok < 0) {  // no processed_out row to write: nothing to sweep
    if (threadIdx.x == 0) argmax[row] = -1;
    return;
  }
  const float t = temperature_ptr != nullptr ? *temperature_ptr : temperature;
  const T* x = logits + x_offsets[row];
  U* o = kWrite ? out + out_offsets[row] : nullptr;
  float best = -INFINITY;
  int64_t col = INT64_MAX;
  for (int64_t c = threadIdx.x; c < V; c += kDenoiseThreads) {
    const float z = round_to<T>(__fdiv_rn(static_cast<float>(x[c]), t));
    if constexpr (kWrite) o[c] = static_cast<U>(z);
    if (z > best) {  // strict, over increasing columns: the thread's first maximum
      best = z;
      col = c;
    }
  }
  for (int delta = 16; delta > 0; delta >>= 1) {
    const float b = __shfl_down_sync(0xffffffffu, best, delta);
    const int64_t c = __shfl_down_sync(0xffffffffu, col, delta);
    take_better(best, col, b, c);
  }
  __shared__ float warp_best[kDenoiseThreads / 32];
  __shared__ int64_t warp_col[kDenoiseThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_col[warp] = col;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kDenoiseThreads / 32; ++w) take_better(best, col, warp_best[w], warp_col[w]);
    // Every z -inf: torch.argmax gives 0.
    argmax[row] = tok < 0 ? -1 : (col == INT64_MAX ? 0 : col);
  }
}

}  // namespace cuda
}  // namespace dmkernels
