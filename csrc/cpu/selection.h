// Shared pieces of the CPU selection kernels: the ranking every rule uses and
// the per-row loop. Scores arrive as [B, L] in any float dtype and strides; they
// are read through a float64 contiguous copy ([B, L], tiny beside the logits).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace dmkernels {

// The ranking of every selection rule: higher score first, numbers before NaN,
// ties to the lower position (as torch.argmax / stable sorts do).
inline bool ranks_before(double a, int64_t i, double b, int64_t j) {
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a != b) return a > b;
  return i < j;
}

// Walks the eligible positions of one row best first (ranks_before) and
// returns how many pass `accept(n, position)` (n = 0, 1, ...) before the first
// that fails. `order` is left holding them, best first, in its first entries.
// The rules stop after a few positions, so the row is ordered lazily: the best
// 16 (nth_element, then a sort of those), then the next 32, 64, ...: O(L) for a
// short prefix instead of a full sort.
template <typename Accept>
int64_t ranked_prefix(const double* score, const bool* eligible, int64_t L, std::vector<int64_t>& order,
                      Accept accept) {
  order.clear();
  for (int64_t i = 0; i < L; ++i) {
    if (eligible[i]) order.push_back(i);
  }
  const auto better = [&](int64_t i, int64_t j) { return ranks_before(score[i], i, score[j], j); };
  const int64_t size = static_cast<int64_t>(order.size());
  int64_t done = 0;
  for (int64_t chunk = 16; done < size; chunk *= 2) {
    const int64_t end = std::min(size, done + chunk);
    if (end < size) std::nth_element(order.begin() + done, order.begin() + end, order.end(), better);
    std::sort(order.begin() + done, order.begin() + end, better);
    for (; done < end; ++done) {
      if (!accept(done, order[done])) return done;
    }
  }
  return size;
}

// Runs row_fn(b, score_row, eligible_row, out_row) over rows in parallel and
// returns the bool [B, L] selection. `score` may be undefined for rules without one.
template <typename RowFn>
at::Tensor for_each_row(const at::Tensor& score, const at::Tensor& eligible, RowFn row_fn) {
  const int64_t B = eligible.size(0), L = eligible.size(1);
  const at::Tensor score64 = score.defined() ? score.to(at::kDouble).contiguous() : at::Tensor();
  const at::Tensor elig = eligible.contiguous();
  at::Tensor out = at::zeros({B, L}, eligible.options().dtype(at::kBool));
  const double* s = score64.defined() ? score64.const_data_ptr<double>() : nullptr;
  const bool* e = elig.const_data_ptr<bool>();
  bool* o = out.data_ptr<bool>();
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(L, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      row_fn(b, s ? s + b * L : nullptr, e + b * L, o + b * L);
    }
  });
  return out;
}

}  // namespace dmkernels
