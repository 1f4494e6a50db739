// select_group on the CPU (DUS): per row, the eligible positions whose dilated
// group is <= step. Groups skipped earlier (or remasked) are picked up by the
// "<=", and when no eligible position is in those groups the first group that
// still has one is taken, so a row with eligible positions always commits.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_group_cpu(const at::Tensor& eligible, const at::Tensor& groups, const at::Tensor& step) {
  check_select_group_args(eligible, groups, step);
  const int64_t L = eligible.size(1);
  const at::Tensor g64 = groups.to(at::kLong).contiguous();
  const at::Tensor s64 = step.to(at::kLong).contiguous();
  const int64_t* g = g64.const_data_ptr<int64_t>();
  const int64_t* st = s64.const_data_ptr<int64_t>();
  const int64_t g_row_stride = groups.dim() == 2 ? L : 0;
  const int64_t s_row_stride = step.dim() == 1 ? 1 : 0;
  return for_each_row(at::Tensor(), eligible, [&](int64_t b, const double*, const bool* e, bool* out) {
    const int64_t* gb = g + b * g_row_stride;
    int64_t limit = st[b * s_row_stride];
    int64_t first = std::numeric_limits<int64_t>::max();
    for (int64_t i = 0; i < L; ++i) {
      if (e[i]) first = std::min(first, gb[i]);
    }
    limit = std::max(limit, first);
    for (int64_t i = 0; i < L; ++i) out[i] = e[i] && gb[i] <= limit;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("select_group", &select_group_cpu); }

}  // namespace dmkernels
