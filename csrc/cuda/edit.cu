// CUDA binding of edit_ (kernel in edit.cuh). float16 / bfloat16 confidences are
// widened to float32 on the device first ([B, L]: tiny, and exact), so the kernel
// is instantiated for float32 and float64 only. The threshold is rounded to the
// confidence's dtype on the host (a host scalar: no sync).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "edit.cuh"

namespace dmkernels {
namespace {

template <typename S>
cuda::Rows<S> rows_of(const at::Tensor& t) {
  return cuda::Rows<S>{t.const_data_ptr<S>(), t.stride(0), t.stride(1)};
}

template <typename X, typename T, typename C>
void launch_edit(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence, const at::Tensor& editable,
                 double threshold, at::Tensor& changed, at::Tensor& edits) {
  const dim3 grid(static_cast<unsigned>(x.size(0)));
  cuda::edit_kernel<X, T, C><<<grid, cuda::kSelectThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<X>(), x.stride(0), x.stride(1), rows_of<T>(token), rows_of<C>(confidence), rows_of<bool>(editable),
      threshold, x.size(1), changed.data_ptr<bool>(), edits.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename C>
void dispatch_ints(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence, const at::Tensor& editable,
                   double threshold, at::Tensor& changed, at::Tensor& edits) {
  const bool x64 = x.scalar_type() == at::kLong, t64 = token.scalar_type() == at::kLong;
  if (x64 && t64) launch_edit<int64_t, int64_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else if (x64) launch_edit<int64_t, int32_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else if (t64) launch_edit<int32_t, int64_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else launch_edit<int32_t, int32_t, C>(x, token, confidence, editable, threshold, changed, edits);
}

std::tuple<at::Tensor, at::Tensor> edit_cuda(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence,
                                             const at::Tensor& editable, double threshold) {
  check_edit_args(x, token, confidence, editable, threshold);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [changed, edits] = new_edit_outputs(x);
  if (x.size(0) == 0) return {changed, edits};
  const double t = edit_threshold_in_dtype(threshold, confidence.scalar_type());
  if (confidence.scalar_type() == at::kDouble) {
    dispatch_ints<double>(x, token, confidence, editable, t, changed, edits);
  } else {
    const at::Tensor c = confidence.to(at::kFloat);  // no copy for float32
    dispatch_ints<float>(x, token, c, editable, t, changed, edits);
  }
  return {changed, edits};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CUDA, m) { m.impl("edit_", &edit_cuda); }

}  // namespace dmkernels
