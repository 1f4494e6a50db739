// token_stats on CUDA tensors, shared with denoise_stats.cu (host code, torch).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace dmkernels {

// token_stats of checked arguments: (token, confidence, margin, entropy). With
// `device_temperature` (a float32 in device memory) the kernels read T there
// (denoise_stats: no host read) and `temperature` only has to be > 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_stats_cuda_run(
    const at::Tensor& logits, double temperature, int64_t seed, int64_t offset, bool tempered_scores,
    const std::optional<at::Tensor>& positions, const std::optional<at::Tensor>& rng,
    const float* device_temperature);

}  // namespace dmkernels
