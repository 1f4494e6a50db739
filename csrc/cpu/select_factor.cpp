// select_factor on the CPU: sort the eligible scores (c_1 >= c_2 >= ...) and
// take the longest prefix with (n + 1) * (1 - c_n) <= factor, at least one.
// The bound 1 - factor / (n + 1) rises with n while c_n falls, so the first
// failure ends the prefix. Arithmetic in float64, as the reference does it.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_factor_cpu(const at::Tensor& scores, const at::Tensor& eligible, double factor) {
  check_scored_rule_args("select_factor", scores, eligible, "factor", factor);
  const int64_t L = scores.size(1);
  return for_each_row(scores, eligible, [&](int64_t, const double* s, const bool* e, bool* out) {
    std::vector<int64_t> order;
    // Position n (0-based) is the (n + 1)-th best: it passes if (n + 2) * (1 - c) <= factor.
    int64_t count = ranked_prefix(s, e, L, order, [&](int64_t n, int64_t i) {
      return static_cast<double>(n + 2) * (1.0 - s[i]) <= factor;
    });
    if (!order.empty()) count = std::max<int64_t>(count, 1);
    for (int64_t t = 0; t < count; ++t) out[order[t]] = true;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_factor", &select_factor_cpu); }

}  // namespace dmkernels
