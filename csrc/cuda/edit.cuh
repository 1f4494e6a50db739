// edit_ on the GPU: device code only (no torch). One block per row, one sweep:
// a position is rewritten when editable, the proposed token is real (>= 0) and
// differs from the one there, and its confidence is strictly above the
// threshold (already rounded to the confidence's dtype by the binding, so the
// float64 comparison is PyTorch's `confidence > threshold`; NaN never passes).
// Only the changed positions are stored to; `edits` counts them per row.
#pragma once

#include <cstdint>

#include "select.cuh"  // Rows, block_sum, kSelectThreads

namespace dmkernels {
namespace cuda {

template <typename X, typename T, typename C>
__global__ void __launch_bounds__(kSelectThreads)
    edit_kernel(X* __restrict__ x, int64_t xs0, int64_t xs1, Rows<T> token, Rows<C> confidence, Rows<bool> editable,
                double threshold, int64_t L, bool* __restrict__ changed, int64_t* __restrict__ edits) {
  __shared__ int64_t scratch[32];
  const int64_t b = blockIdx.x;
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    X* cell = x + b * xs0 + i * xs1;
    const int64_t tok = static_cast<int64_t>(token.at(b, i));
    const bool confident = static_cast<double>(confidence.at(b, i)) > threshold;
    const bool write = editable.at(b, i) && confident && tok >= 0 && tok != static_cast<int64_t>(*cell);
    if (write) *cell = static_cast<X>(tok);
    changed[b * L + i] = write;
    count += write;
  }
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) edits[b] = count;
}

}  // namespace cuda
}  // namespace dmkernels
