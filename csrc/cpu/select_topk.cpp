// select_topk on the CPU: per row, nth_element over the eligible positions
// (O(L)), then mark the k best. k is read from a [B] tensor, never from Python;
// a negative k selects nothing (the rule of every backend, none of which reads k
// on the host).
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_topk_cpu(const at::Tensor& scores, const at::Tensor& k, const at::Tensor& eligible) {
  check_select_topk_args(scores, k, eligible);
  const at::Tensor k64 = k.to(at::kLong).contiguous();
  const int64_t* kp = k64.const_data_ptr<int64_t>();
  const int64_t L = scores.size(1);
  return for_each_row(scores, eligible, [&](int64_t b, const double* s, const bool* e, bool* out) {
    std::vector<int64_t> cand;
    for (int64_t i = 0; i < L; ++i) {
      if (e[i]) cand.push_back(i);
    }
    const int64_t take = std::clamp<int64_t>(kp[b], 0, static_cast<int64_t>(cand.size()));
    if (take < static_cast<int64_t>(cand.size())) {
      std::nth_element(cand.begin(), cand.begin() + take, cand.end(),
                       [&](int64_t i, int64_t j) { return ranks_before(s[i], i, s[j], j); });
    }
    for (int64_t t = 0; t < take; ++t) out[cand[t]] = true;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_topk", &select_topk_cpu); }

}  // namespace dmkernels
