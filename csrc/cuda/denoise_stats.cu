// CUDA binding of denoise_stats: token_stats' own launches with tempered scores
// (token_stats_cuda_run; frozen rows as its positions, a 0-d temperature tensor
// read on the device) for token and entropy, then denoise_stats.cuh's sweep for
// the argmax of x / T and processed_out. No host read of any tensor.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "denoise_stats.cuh"
#include "token_stats_cuda.h"

namespace dmkernels {
namespace {

// Element offset of every row of t ([..., V], any leading strides), on the device.
at::Tensor row_offsets(const at::Tensor& t) {
  auto opts = t.options().dtype(at::kLong);
  at::Tensor offsets = at::zeros({1}, opts);
  for (int64_t d = 0; d < t.dim() - 1; ++d) {
    offsets = offsets.unsqueeze(1).add(at::arange(t.size(d), opts).mul_(t.stride(d)).unsqueeze(0)).reshape(-1);
  }
  return offsets;
}

template <typename T, typename U, bool kWrite>
void launch_divide(const at::Tensor& logits, const at::Tensor& x_offsets, U* out, const int64_t* out_offsets,
                   const at::Tensor& token, const bool* frozen, const float* temperature_ptr, float temperature,
                   at::Tensor& argmax, int64_t rows) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cuda::denoise_divide_kernel<T, U, kWrite><<<static_cast<unsigned>(rows), cuda::kDenoiseThreads, 0, stream>>>(
      logits.const_data_ptr<T>(), x_offsets.const_data_ptr<int64_t>(), out, out_offsets,
      token.const_data_ptr<int64_t>(), frozen, temperature_ptr, temperature, logits.size(-1),
      argmax.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void divide_rows(const at::Tensor& logits, const at::Tensor& x_offsets, const std::optional<at::Tensor>& out,
                 const at::Tensor& token, const bool* frozen, const float* temperature_ptr, float temperature,
                 at::Tensor& argmax, int64_t rows) {
  if (!out.has_value()) {
    return launch_divide<T, T, false>(logits, x_offsets, static_cast<T*>(nullptr), nullptr, token, frozen,
                                      temperature_ptr, temperature, argmax, rows);
  }
  const at::Tensor out_offsets = row_offsets(*out);
  const int64_t* oo = out_offsets.const_data_ptr<int64_t>();
  switch (out->scalar_type()) {
    case at::kFloat:
      return launch_divide<T, float, true>(logits, x_offsets, out->data_ptr<float>(), oo, token, frozen,
                                           temperature_ptr, temperature, argmax, rows);
    case at::kHalf:
      return launch_divide<T, at::Half, true>(logits, x_offsets, out->data_ptr<at::Half>(), oo, token, frozen,
                                              temperature_ptr, temperature, argmax, rows);
    case at::kBFloat16:
      return launch_divide<T, at::BFloat16, true>(logits, x_offsets, out->data_ptr<at::BFloat16>(), oo, token,
                                                  frozen, temperature_ptr, temperature, argmax, rows);
    default: TORCH_CHECK(false, "unreachable: processed_out's dtype was checked");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> denoise_stats_cuda(
    const at::Tensor& logits, double temperature, const std::optional<at::Tensor>& temperature_tensor, int64_t seed,
    int64_t offset, const std::optional<at::Tensor>& rng, const std::optional<at::Tensor>& processed_out,
    const std::optional<at::Tensor>& frozen) {
  check_denoise_stats_args(logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t V = logits.size(-1);
  const int64_t rows = logits.numel() / V;
  const float* t_ptr = temperature_tensor.has_value() ? temperature_tensor->const_data_ptr<float>() : nullptr;
  std::optional<at::Tensor> positions;
  at::Tensor frozen_c;
  if (frozen.has_value()) {
    positions = at::logical_not(*frozen);  // [rows] bools on the device
    frozen_c = frozen->contiguous();
  }
  auto [token, confidence, margin, entropy] =
      token_stats_cuda_run(logits, temperature, seed, offset, /*tempered_scores=*/true, positions, rng, t_ptr);
  at::Tensor argmax = at::empty_like(token);
  if (poison_outputs()) argmax.fill_(-7);
  if (rows == 0) return {token, argmax, entropy};
  const at::Tensor x_offsets = row_offsets(logits);
  const bool* frozen_ptr = frozen_c.defined() ? frozen_c.const_data_ptr<bool>() : nullptr;
  const float t32 = static_cast<float>(temperature);  // T rounded to float32, as torch divides
  AT_DISPATCH_SWITCH(logits.scalar_type(), "denoise_stats_cuda",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      divide_rows<float>(logits, x_offsets, processed_out, token, frozen_ptr, t_ptr, t32, argmax, rows);
    })
    AT_DISPATCH_CASE(at::kHalf, [&] {
      divide_rows<at::Half>(logits, x_offsets, processed_out, token, frozen_ptr, t_ptr, t32, argmax, rows);
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      divide_rows<at::BFloat16>(logits, x_offsets, processed_out, token, frozen_ptr, t_ptr, t32, argmax, rows);
    }));
  return {token, argmax, entropy};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CUDA, m) {
  m.impl("denoise_stats", &denoise_stats_cuda);
}

}  // namespace dmkernels
