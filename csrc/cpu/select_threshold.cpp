// select_threshold on the CPU: one scan per row; the best eligible position is
// kept as a fallback so a row with eligible positions always commits one.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_threshold_cpu(const at::Tensor& scores, const at::Tensor& eligible, double threshold) {
  check_scored_rule_args("select_threshold", scores, eligible, "threshold", threshold);
  const int64_t L = scores.size(1);
  return for_each_row(scores, eligible, [&](int64_t, const double* s, const bool* e, bool* out) {
    int64_t best = -1;
    bool any = false;
    for (int64_t i = 0; i < L; ++i) {
      if (!e[i]) continue;
      if (s[i] >= threshold) out[i] = any = true;
      if (best < 0 || ranks_before(s[i], i, s[best], best)) best = i;
    }
    if (!any && best >= 0) out[best] = true;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_threshold", &select_threshold_cpu); }

}  // namespace dmkernels
