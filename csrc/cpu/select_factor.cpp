// select_factor on the CPU: sort the eligible scores (c_1 >= c_2 >= ...) and
// take the longest prefix with (n + 1) * (1 - c_n) <= factor, at least one.
// The bound 1 - factor / (n + 1) rises with n while c_n falls, so the first
// failure ends the prefix. Arithmetic in float64, as the reference does it.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_factor_cpu(const at::Tensor& scores, const at::Tensor& eligible, double factor) {
  const char* op = "select_factor";
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  TORCH_CHECK(!std::isnan(factor), "dmkernels.select_factor: factor is NaN");
  const int64_t L = scores.size(1);
  return for_each_row(scores, eligible, [&](int64_t, const double* s, const bool* e, bool* out) {
    const std::vector<int64_t> order = ranked_eligible(s, e, L);
    int64_t count = 0;
    for (int64_t n = 1; n <= static_cast<int64_t>(order.size()); ++n) {
      if (!(static_cast<double>(n + 1) * (1.0 - s[order[n - 1]]) <= factor)) break;
      count = n;
    }
    if (!order.empty()) count = std::max<int64_t>(count, 1);
    for (int64_t t = 0; t < count; ++t) out[order[t]] = true;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_factor", &select_factor_cpu); }

}  // namespace dmkernels
