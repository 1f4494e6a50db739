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
  check_select_topk_args(scores, k, eligible);
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

// select_threshold and select_factor: [B, L] scores and one float64 parameter.
using ScoredRuleKernel = void (*)(cuda::Rows<double>, cuda::Rows<bool>, double, int64_t, bool*);

at::Tensor run_scored_rule(const char* op, const char* param_name, ScoredRuleKernel kernel, const at::Tensor& scores,
                           const at::Tensor& eligible, double param) {
  check_scored_rule_args(op, scores, eligible, param_name, param);
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor out = new_selection(eligible);
  if (out.numel() == 0) return out;
  const at::Tensor s = scores.to(at::kDouble);
  const Launch l = launch_for(eligible);
  kernel<<<l.grid, cuda::kSelectThreads, 0, l.stream>>>(rows_of<double>(s), rows_of<bool>(eligible), param, l.L,
                                                         out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_threshold_cuda(const at::Tensor& scores, const at::Tensor& eligible, double threshold) {
  return run_scored_rule("select_threshold", "threshold", cuda::select_threshold_kernel<double>, scores, eligible,
                         threshold);
}

at::Tensor select_factor_cuda(const at::Tensor& scores, const at::Tensor& eligible, double factor) {
  return run_scored_rule("select_factor", "factor", cuda::select_factor_kernel<double>, scores, eligible, factor);
}

at::Tensor select_entropy_bounded_cuda(const at::Tensor& error, const at::Tensor& entropy,
                                       const at::Tensor& eligible, double gamma) {
  check_select_entropy_bounded_args(error, entropy, eligible, gamma);
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
  check_select_group_args(eligible, groups, step);
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
  check_commit_args(x, token, select, mask_id);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [changed, remaining] = new_commit_outputs(x);
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
