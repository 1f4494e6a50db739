// CUDA bindings of token_stats and token_stats_partial: checks, launch
// configuration, and the kernels of token_stats.cuh (split-V partial tuples,
// then an ordered merge into the scores, or into the slice's eight fields).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "token_stats.cuh"
#include "token_stats_cuda.h"

namespace dmkernels {
namespace {

// Element offset of every row of `logits` ([..., V], any leading strides), on
// the device, built from small arange tensors: no copy of the logits, no sync.
at::Tensor row_offsets(const at::Tensor& logits) {
  auto opts = logits.options().dtype(at::kLong);
  at::Tensor offsets = at::zeros({1}, opts);
  for (int64_t d = 0; d < logits.dim() - 1; ++d) {
    offsets = offsets.unsqueeze(1).add(at::arange(logits.size(d), opts).mul_(logits.stride(d)).unsqueeze(0)).reshape(-1);
  }
  return offsets;
}

// What the tuple kernel reads besides the logits: row offsets, the positions
// mask and the device (seed, offset), made contiguous once per call.
struct StatsInputs {
  at::Tensor offsets, active, rng;
};

StatsInputs stats_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& positions,
                         const std::optional<at::Tensor>& rng) {
  StatsInputs in;
  in.offsets = row_offsets(logits);
  if (positions.has_value()) in.active = positions->contiguous();
  if (rng.has_value()) in.rng = rng->contiguous();
  return in;
}

// Plans the vocabulary split over p.V columns (p.V, p.lead, p.col_base and
// p.row_base set by the caller), fills the rest of `p` and launches the tuple
// kernel on rows x splits blocks. Returns the tuple buffer [rows * splits];
// `in` must outlive the launches.
template <bool kSlice>
at::Tensor launch_stats_tuples(const char* op, const at::Tensor& logits, double temperature, int64_t seed,
                               int64_t offset, bool tempered_scores, const StatsInputs& in, cuda::StatsParams& p) {
  const int64_t V = p.V;
  const int64_t rows = p.rows;
  // Enough blocks to fill the GPU twice over, but no split smaller than one
  // pass of the block's threads over 32-column groups.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, logits.device().index()));
  const int64_t min_cols = 32 * cuda::kStatsThreads;
  const int64_t max_splits = std::max<int64_t>(1, (V + min_cols - 1) / min_cols);
  const int64_t splits = std::min<int64_t>(max_splits, std::max<int64_t>(1, (2 * sms + rows - 1) / rows));
  TORCH_CHECK(splits <= 65535, "dmkernels.", op, ": too many vocabulary splits");
  p.splits = splits;
  p.cols_per_split = ((V + splits - 1) / splits + 31) / 32 * 32;
  p.sample = temperature > 0.0;
  p.tempered_scores = tempered_scores;
  p.inv_temperature = p.sample ? static_cast<float>(1.0 / temperature) : 1.0f;
  p.key_scales = key_scales(p.inv_temperature);
  p.inv_s = 1.0f / p.key_scales.s;
  // One distribution: the sampler's group exps are the scores' exps.
  p.shared = p.sample && (tempered_scores || p.inv_temperature == 1.0f);
  p.key = make_noise_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  p.rng = in.rng.defined() ? in.rng.const_data_ptr<int64_t>() : nullptr;

  at::Tensor partial = at::empty({rows * splits * static_cast<int64_t>(sizeof(cuda::StatsTuple))},
                                 logits.options().dtype(at::kByte));
  auto* partial_ptr = reinterpret_cast<cuda::StatsTuple*>(partial.data_ptr());
  const bool* active_ptr = in.active.defined() ? in.active.const_data_ptr<bool>() : nullptr;
  const int64_t* offsets = in.offsets.const_data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  AT_DISPATCH_SWITCH(logits.scalar_type(), "token_stats_cuda",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      cuda::token_stats_partial_kernel<float, kSlice><<<grid, cuda::kStatsThreads, 0, stream>>>(
          logits.const_data_ptr<float>(), offsets, active_ptr, p, partial_ptr);
    })
    AT_DISPATCH_CASE(at::kHalf, [&] {
      cuda::token_stats_partial_kernel<at::Half, kSlice><<<grid, cuda::kStatsThreads, 0, stream>>>(
          logits.const_data_ptr<at::Half>(), offsets, active_ptr, p, partial_ptr);
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      cuda::token_stats_partial_kernel<at::BFloat16, kSlice><<<grid, cuda::kStatsThreads, 0, stream>>>(
          logits.const_data_ptr<at::BFloat16>(), offsets, active_ptr, p, partial_ptr);
    }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_stats_cuda_run(
    const at::Tensor& logits, double temperature, int64_t seed, int64_t offset, bool tempered_scores,
    const std::optional<at::Tensor>& positions, const std::optional<at::Tensor>& rng,
    const float* device_temperature) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t V = logits.size(-1);
  const int64_t rows = logits.numel() / V;
  auto [token, confidence, margin, entropy] = new_token_stats_outputs(logits);
  if (rows == 0) return {token, confidence, margin, entropy};

  const StatsInputs in = stats_inputs(logits, positions, rng);
  cuda::StatsParams p;
  p.rows = rows;
  p.V = V;
  p.temperature = device_temperature;
  const at::Tensor partial = launch_stats_tuples<false>("token_stats", logits, temperature, seed, offset,
                                                        tempered_scores, in, p);
  const bool* active_ptr = in.active.defined() ? in.active.const_data_ptr<bool>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int merge_threads = 128;
  const unsigned blocks = static_cast<unsigned>((rows + merge_threads - 1) / merge_threads);
  const auto* tuples = reinterpret_cast<const cuda::StatsTuple*>(partial.const_data_ptr());
  const int64_t* offsets = in.offsets.const_data_ptr<int64_t>();
  AT_DISPATCH_SWITCH(logits.scalar_type(), "token_stats_cuda",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      cuda::token_stats_merge_kernel<float><<<blocks, merge_threads, 0, stream>>>(
          logits.const_data_ptr<float>(), offsets, tuples, active_ptr, p, token.data_ptr<int64_t>(),
          confidence.data_ptr<float>(), margin.data_ptr<float>(), entropy.data_ptr<float>());
    })
    AT_DISPATCH_CASE(at::kHalf, [&] {
      cuda::token_stats_merge_kernel<at::Half><<<blocks, merge_threads, 0, stream>>>(
          logits.const_data_ptr<at::Half>(), offsets, tuples, active_ptr, p, token.data_ptr<int64_t>(),
          confidence.data_ptr<float>(), margin.data_ptr<float>(), entropy.data_ptr<float>());
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      cuda::token_stats_merge_kernel<at::BFloat16><<<blocks, merge_threads, 0, stream>>>(
          logits.const_data_ptr<at::BFloat16>(), offsets, tuples, active_ptr, p, token.data_ptr<int64_t>(),
          confidence.data_ptr<float>(), margin.data_ptr<float>(), entropy.data_ptr<float>());
    }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {token, confidence, margin, entropy};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_stats_cuda(
    const at::Tensor& logits, double temperature, int64_t seed, int64_t offset, bool tempered_scores,
    const std::optional<at::Tensor>& positions, const std::optional<at::Tensor>& rng) {
  check_token_stats_args(logits, temperature, seed, offset, positions, rng);
  return token_stats_cuda_run(logits, temperature, seed, offset, tempered_scores, positions, rng, nullptr);
}

// token_stats_partial: the slice [vocab_start, vocab_start + V) as lead + V
// virtual columns from the noise group edge col_base (token_stats.cuh).
at::Tensor token_stats_partial_cuda(const at::Tensor& logits, double temperature, int64_t seed, int64_t offset,
                                    bool tempered_scores, const std::optional<at::Tensor>& positions,
                                    const std::optional<at::Tensor>& rng, int64_t vocab_start, int64_t row_offset) {
  check_token_stats_partial_args(logits, temperature, seed, offset, positions, rng, vocab_start, row_offset);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t V = logits.size(-1);
  const int64_t rows = logits.numel() / V;
  at::Tensor out = new_token_stats_partial_output(logits);
  if (rows == 0) return out;

  const StatsInputs in = stats_inputs(logits, positions, rng);
  cuda::StatsParams p;
  p.rows = rows;
  p.lead = vocab_start % kNoiseGroup;
  p.col_base = vocab_start - p.lead;
  p.row_base = row_offset;
  p.V = V + p.lead;
  const at::Tensor partial = launch_stats_tuples<true>("token_stats_partial", logits, temperature, seed, offset,
                                                       tempered_scores, in, p);
  const bool* active_ptr = in.active.defined() ? in.active.const_data_ptr<bool>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((rows + threads - 1) / threads);
  const auto* tuples = reinterpret_cast<const cuda::StatsTuple*>(partial.const_data_ptr());
  const int64_t* offsets = in.offsets.const_data_ptr<int64_t>();
  AT_DISPATCH_SWITCH(logits.scalar_type(), "token_stats_partial_cuda",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      cuda::token_stats_partial_finish_kernel<float><<<blocks, threads, 0, stream>>>(
          logits.const_data_ptr<float>(), offsets, tuples, active_ptr, p, out.data_ptr<float>());
    })
    AT_DISPATCH_CASE(at::kHalf, [&] {
      cuda::token_stats_partial_finish_kernel<at::Half><<<blocks, threads, 0, stream>>>(
          logits.const_data_ptr<at::Half>(), offsets, tuples, active_ptr, p, out.data_ptr<float>());
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      cuda::token_stats_partial_finish_kernel<at::BFloat16><<<blocks, threads, 0, stream>>>(
          logits.const_data_ptr<at::BFloat16>(), offsets, tuples, active_ptr, p, out.data_ptr<float>());
    }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CUDA, m) {
  m.impl("token_stats", &token_stats_cuda);
  m.impl("token_stats_partial", &token_stats_partial_cuda);
}

}  // namespace dmkernels
