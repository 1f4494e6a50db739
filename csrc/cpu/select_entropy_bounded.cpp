// select_entropy_bounded (EB-Sampler) on the CPU: order eligible positions by
// error ascending and take the longest prefix whose entropies satisfy
// sum(H) - max(H) <= gamma, at least one. Sums in float64 in prefix order,
// exactly as the reference's cumsum.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_entropy_bounded_cpu(const at::Tensor& error, const at::Tensor& entropy,
                                      const at::Tensor& eligible, double gamma) {
  check_select_entropy_bounded_args(error, entropy, eligible, gamma);
  const int64_t L = error.size(1);
  // Ascending error == descending -error (NaN stays last under ranks_before).
  const at::Tensor neg_error = error.to(at::kDouble).neg();
  const at::Tensor h64 = entropy.to(at::kDouble).contiguous();
  const double* h = h64.const_data_ptr<double>();
  return for_each_row(neg_error, eligible, [&](int64_t b, const double* s, const bool* e, bool* out) {
    const double* hb = h + b * L;
    double sum = 0.0, peak = -std::numeric_limits<double>::infinity();
    std::vector<int64_t> order;
    int64_t count = ranked_prefix(s, e, L, order, [&](int64_t, int64_t i) {
      sum += hb[i];
      peak = std::max(peak, hb[i]);
      return sum - peak <= gamma;
    });
    if (!order.empty()) count = std::max<int64_t>(count, 1);
    for (int64_t t = 0; t < count; ++t) out[order[t]] = true;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_entropy_bounded", &select_entropy_bounded_cpu); }

}  // namespace dmkernels
