// CUDA binding of renoise_ (kernel in renoise.cuh). The rng tensor, when given,
// is read by the kernel on the device (no sync); everything else is a host scalar.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "renoise.cuh"

namespace dmkernels {
namespace {

template <typename X, typename S>
void launch_renoise(at::Tensor& canvas, const at::Tensor& sample, const at::Tensor& accept,
                    const std::optional<at::Tensor>& frozen, uint64_t vocab, uint64_t seed, uint64_t offset,
                    const at::Tensor& rng, at::Tensor& noised) {
  const dim3 grid(static_cast<unsigned>(canvas.size(0)));
  cuda::renoise_kernel<X, S><<<grid, cuda::kSelectThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      canvas.data_ptr<X>(), canvas.stride(0), canvas.stride(1),
      cuda::Rows<S>{sample.const_data_ptr<S>(), sample.stride(0), sample.stride(1)},
      cuda::Rows<bool>{accept.const_data_ptr<bool>(), accept.stride(0), accept.stride(1)},
      frozen.has_value() ? frozen->const_data_ptr<bool>() : nullptr, frozen.has_value() ? frozen->stride(0) : 0,
      canvas.size(1), vocab, seed, offset, rng.defined() ? rng.const_data_ptr<int64_t>() : nullptr,
      noised.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor renoise_cuda(at::Tensor& canvas, const at::Tensor& sample, const at::Tensor& accept,
                        const std::optional<at::Tensor>& frozen, int64_t vocab_size, int64_t seed, int64_t offset,
                        const std::optional<at::Tensor>& rng) {
  check_renoise_args(canvas, sample, accept, frozen, vocab_size, seed, offset, rng);
  const c10::cuda::CUDAGuard guard(canvas.device());
  at::Tensor noised = new_renoise_output(canvas);
  if (canvas.size(0) == 0) return noised;
  const at::Tensor r = rng.has_value() ? rng->contiguous() : at::Tensor();  // 2 elements
  const uint64_t v = static_cast<uint64_t>(vocab_size), s = static_cast<uint64_t>(seed);
  const uint64_t o = static_cast<uint64_t>(offset);
  const bool c64 = canvas.scalar_type() == at::kLong, s64 = sample.scalar_type() == at::kLong;
  if (c64 && s64) launch_renoise<int64_t, int64_t>(canvas, sample, accept, frozen, v, s, o, r, noised);
  else if (c64) launch_renoise<int64_t, int32_t>(canvas, sample, accept, frozen, v, s, o, r, noised);
  else if (s64) launch_renoise<int32_t, int64_t>(canvas, sample, accept, frozen, v, s, o, r, noised);
  else launch_renoise<int32_t, int32_t>(canvas, sample, accept, frozen, v, s, o, r, noised);
  return noised;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CUDA, m) { m.impl("renoise_", &renoise_cuda); }

}  // namespace dmkernels
