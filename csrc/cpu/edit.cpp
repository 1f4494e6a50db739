// edit_ on the CPU: token editing (LLaDA2.1, diffusers' LLaDA2 scheduler). A
// position is rewritten when it is editable, the proposed token is a real token
// (>= 0) other than the one there, and its confidence is strictly above the
// threshold (compared in the confidence's dtype, as PyTorch compares a tensor
// with a Python float; NaN never passes). `changed` marks exactly the positions
// written, `edits` counts them per row.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../checks.h"

namespace dmkernels {
namespace {

template <typename X, typename T, typename C>
void edit_rows(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence, const at::Tensor& editable,
               double threshold, at::Tensor& changed, at::Tensor& edits) {
  X* xp = x.data_ptr<X>();
  const T* tp = token.const_data_ptr<T>();
  const C* cp = confidence.const_data_ptr<C>();
  const bool* ep = editable.const_data_ptr<bool>();
  bool* outp = changed.data_ptr<bool>();
  int64_t* np = edits.data_ptr<int64_t>();
  const int64_t B = x.size(0), L = x.size(1);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), ts0 = token.stride(0), ts1 = token.stride(1);
  const int64_t cs0 = confidence.stride(0), cs1 = confidence.stride(1);
  const int64_t es0 = editable.stride(0), es1 = editable.stride(1);
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      X* xr = xp + b * xs0;
      const T* tr = tp + b * ts0;
      const C* cr = cp + b * cs0;
      const bool* er = ep + b * es0;
      bool* out = outp + b * L;
      int64_t count = 0;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t current = xr[i * xs1];
        const int64_t tok = tr[i * ts1];
        // float64 holds every confidence dtype and the rounded threshold exactly.
        const bool confident = static_cast<double>(cr[i * cs1]) > threshold;
        const bool write = er[i * es1] & confident & (tok >= 0) & (tok != current);
        if (write) xr[i * xs1] = static_cast<X>(tok);  // only changed positions are stored to
        out[i] = write;
        count += write;
      }
      np[b] = count;
    }
  });
}

// int64 tokens written into an int32 canvas would wrap. Reading them is free on
// the CPU, so editable ones are checked before anything is written (not on the GPU).
void check_tokens_fit_int32(const at::Tensor& token, const at::Tensor& editable) {
  const int64_t* tp = token.const_data_ptr<int64_t>();
  const bool* ep = editable.const_data_ptr<bool>();
  const int64_t B = token.size(0), L = token.size(1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < L; ++i) {
      const int64_t tok = tp[b * token.stride(0) + i * token.stride(1)];
      TORCH_CHECK_VALUE(!ep[b * editable.stride(0) + i * editable.stride(1)] ||
                            tok <= std::numeric_limits<int32_t>::max(),
                        "dmkernels.edit_: token[", b, ", ", i, "] = ", tok, " does not fit x's dtype int32");
    }
  }
}

template <typename C>
void dispatch_ints(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence, const at::Tensor& editable,
                   double threshold, at::Tensor& changed, at::Tensor& edits) {
  const bool x64 = x.scalar_type() == at::kLong, t64 = token.scalar_type() == at::kLong;
  if (x64 && t64) edit_rows<int64_t, int64_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else if (x64) edit_rows<int64_t, int32_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else if (t64) edit_rows<int32_t, int64_t, C>(x, token, confidence, editable, threshold, changed, edits);
  else edit_rows<int32_t, int32_t, C>(x, token, confidence, editable, threshold, changed, edits);
}

std::tuple<at::Tensor, at::Tensor> edit_cpu(at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence,
                                            const at::Tensor& editable, double threshold) {
  check_edit_args(x, token, confidence, editable, threshold);
  auto [changed, edits] = new_edit_outputs(x);
  if (x.scalar_type() == at::kInt && token.scalar_type() == at::kLong) check_tokens_fit_int32(token, editable);
  const double t = edit_threshold_in_dtype(threshold, confidence.scalar_type());
  switch (confidence.scalar_type()) {
    case at::kFloat: dispatch_ints<float>(x, token, confidence, editable, t, changed, edits); break;
    case at::kDouble: dispatch_ints<double>(x, token, confidence, editable, t, changed, edits); break;
    case at::kHalf: dispatch_ints<c10::Half>(x, token, confidence, editable, t, changed, edits); break;
    default: dispatch_ints<c10::BFloat16>(x, token, confidence, editable, t, changed, edits); break;
  }
  return {changed, edits};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("edit_", &edit_cpu); }

}  // namespace dmkernels
