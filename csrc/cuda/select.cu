// CUDA bindings of the selection ops and commit_ (kernels in select.cuh).
// Scores are converted to float64 on the device first ([B, L]: tiny), so one
// kernel instance per op ranks every input dtype exactly as the CPU does.
// Nothing here reads device values on the host: a negative k selects nothing
// instead of raising (the CPU kernel raises; checking here would sync).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "select.cuh"

namespace dmkernels {
namespace {

template <typename S>
cuda::Rows<S> rows_of(const at::Tensor& t) {
  return cuda::Rows<S>{t.const_data_ptr<S>(), t.stride(0), t.stride(1)};
}

// [L] groups seen as [B, L] rows with a zero row stride.
template <typename S>
cuda::Rows<S> rows_of_maybe_1d(const at::Tensor& t) {
  return t.dim() == 1 ? cuda::Rows<S>{t.const_data_ptr<S>(), 0, t.stride(0)} : rows_of<S>(t);
}

struct Launch {
  dim3 grid;
  cudaStream_t stream;
  int64_t L;
};

Launch launch_for(const at::Tensor& eligible) {
  return Launch{dim3(static_cast<unsigned>(eligible.size(0))), c10::cuda::getCurrentCUDAStream(), eligible.size(1)};
}

at::Tensor new_selection(const at::Tensor& eligible) {
  return at::empty(eligible.sizes(), eligible.options().dtype(at::kBool));
}

at::Tensor select_topk_cuda(const at::Tensor& scores, const at::Tensor& k, const at::Tensor& eligible) {
  const char* op = "select_topk";
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  check_same_device(op, "k", k, scores, "scores");
  check_dtype(op, "k", k, {at::kLong, at::kInt});
  check_shape(op, "k", k, {scores.size(0)}, "one count per row of scores");
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor s = scores.to(at::kDouble), k64 = k.to(at::kLong).contiguous();
  const Launch l = launch_for(eligible);
  cuda::select_topk_kernel<double><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
      rows_of<double>(s), rows_of<bool>(eligible), k64.const_data_ptr<int64_t>(), l.L, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_threshold_cuda(const at::Tensor& scores, const at::Tensor& eligible, double threshold) {
  const char* op = "select_threshold";
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  TORCH_CHECK(!std::isnan(threshold), "dmkernels.select_threshold: threshold is NaN");
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor s = scores.to(at::kDouble);
  const Launch l = launch_for(eligible);
  cuda::select_threshold_kernel<double><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
      rows_of<double>(s), rows_of<bool>(eligible), threshold, l.L, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_factor_cuda(const at::Tensor& scores, const at::Tensor& eligible, double factor) {
  const char* op = "select_factor";
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  TORCH_CHECK(!std::isnan(factor), "dmkernels.select_factor: factor is NaN");
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor s = scores.to(at::kDouble);
  const Launch l = launch_for(eligible);
  cuda::select_factor_kernel<double><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
      rows_of<double>(s), rows_of<bool>(eligible), factor, l.L, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_entropy_bounded_cuda(const at::Tensor& error, const at::Tensor& entropy,
                                       const at::Tensor& eligible, double gamma) {
  const char* op = "select_entropy_bounded";
  check_scores_2d(op, "error", error);
  check_scores_2d(op, "entropy", entropy);
  check_same_device(op, "entropy", entropy, error, "error");
  check_shape(op, "entropy", entropy, error.sizes(), "error.shape");
  check_eligible(op, eligible, error, "error");
  TORCH_CHECK(!std::isnan(gamma), "dmkernels.select_entropy_bounded: gamma is NaN");
  const c10::cuda::CUDAGuard guard(error.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor e = error.to(at::kDouble), h = entropy.to(at::kDouble);
  const Launch l = launch_for(eligible);
  cuda::select_entropy_bounded_kernel<double, double><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
      rows_of<double>(e), rows_of<double>(h), rows_of<bool>(eligible), gamma, l.L, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_group_cuda(const at::Tensor& eligible, const at::Tensor& groups, const at::Tensor& step) {
  const char* op = "select_group";
  TORCH_CHECK(eligible.dim() == 2, "dmkernels.select_group: eligible must be 2-D [B, L], got shape ",
              eligible.sizes());
  check_dtype(op, "eligible", eligible, {at::kBool});
  check_same_device(op, "groups", groups, eligible, "eligible");
  check_same_device(op, "step", step, eligible, "eligible");
  check_dtype(op, "groups", groups, {at::kLong, at::kInt});
  check_dtype(op, "step", step, {at::kLong, at::kInt});
  const int64_t B = eligible.size(0), L = eligible.size(1);
  TORCH_CHECK(groups.sizes() == at::IntArrayRef{L} || groups.sizes() == eligible.sizes(),
              "dmkernels.select_group: groups must have shape [L] or [B, L] = ", eligible.sizes(), ", got ",
              groups.sizes());
  TORCH_CHECK(step.dim() == 0 || step.sizes() == at::IntArrayRef{B},
              "dmkernels.select_group: step must be a scalar or have shape [B] = [", B, "], got ", step.sizes());
  const c10::cuda::CUDAGuard guard(eligible.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor g = groups.to(at::kLong), st = step.to(at::kLong).contiguous();
  const Launch l = launch_for(eligible);
  cuda::select_group_kernel<int64_t, int64_t><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
      rows_of<bool>(eligible), rows_of_maybe_1d<int64_t>(g), st.const_data_ptr<int64_t>(), step.dim() == 1 ? 1 : 0,
      l.L, out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> commit_cuda(at::Tensor& x, const at::Tensor& token, const at::Tensor& select,
                                               int64_t mask_id) {
  const char* op = "commit_";
  TORCH_CHECK(x.dim() == 2, "dmkernels.commit_: x must be 2-D [B, L], got shape ", x.sizes());
  check_dtype(op, "x", x, {at::kLong, at::kInt});
  check_dtype(op, "token", token, {at::kLong, at::kInt});
  check_dtype(op, "select", select, {at::kBool});
  check_same_device(op, "token", token, x, "x");
  check_same_device(op, "select", select, x, "x");
  check_shape(op, "token", token, x.sizes(), "x.shape");
  check_shape(op, "select", select, x.sizes(), "x.shape");
  TORCH_CHECK(mask_id >= 0, "dmkernels.commit_: mask_id must be >= 0, got ", mask_id);
  TORCH_CHECK(x.scalar_type() == at::kLong || mask_id <= std::numeric_limits<int32_t>::max(),
              "dmkernels.commit_: mask_id = ", mask_id, " does not fit x's dtype int32");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor changed = at::empty(x.sizes(), x.options().dtype(at::kBool));
  at::Tensor remaining = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  if (poison_outputs()) {
    changed.fill_(true);
    remaining.fill_(-7);
  }
  if (x.size(0) == 0) return {changed, remaining};
  const at::Tensor tok = token.to(at::kLong);
  const Launch l = launch_for(select);
  if (x.scalar_type() == at::kLong) {
    cuda::commit_kernel<int64_t, int64_t><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
        x.data_ptr<int64_t>(), x.stride(0), x.stride(1), rows_of<int64_t>(tok), rows_of<bool>(select), mask_id, l.L,
        changed.data_ptr<bool>(), remaining.data_ptr<int64_t>());
  } else {
    cuda::commit_kernel<int32_t, int64_t><<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(
        x.data_ptr<int32_t>(), x.stride(0), x.stride(1), rows_of<int64_t>(tok), rows_of<bool>(select), mask_id, l.L,
        changed.data_ptr<bool>(), remaining.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {changed, remaining};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CUDA, m) {
  m.impl("select_topk", &select_topk_cuda);
  m.impl("select_threshold", &select_threshold_cuda);
  m.impl("select_factor", &select_factor_cuda);
  m.impl("select_entropy_bounded", &select_entropy_bounded_cuda);
  m.impl("select_group", &select_group_cuda);
  m.impl("commit_", &commit_cuda);
}

}  // namespace dmkernels
