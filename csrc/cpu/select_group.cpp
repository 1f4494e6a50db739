// select_group on the CPU (DUS): per row, the eligible positions whose dilated
// group is <= step. Groups skipped earlier (or remasked) are picked up by the
// "<=", and when no eligible position is in those groups the first group that
// still has one is taken, so a row with eligible positions always commits.
#include <torch/library.h>

#include "selection.h"

namespace dmkernels {
namespace {

at::Tensor select_group_cpu(const at::Tensor& eligible, const at::Tensor& groups, const at::Tensor& step) {
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
              "dmkernels.select_group: groups must have shape [L] or [B, L] = ", eligible.sizes(),
              ", got ", groups.sizes());
  TORCH_CHECK(step.dim() == 0 || step.sizes() == at::IntArrayRef{B},
              "dmkernels.select_group: step must be a scalar or have shape [B] = [", B, "], got ",
              step.sizes());
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
