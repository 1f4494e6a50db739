// commit_ on the CPU: the only op that writes the canvas. A position is written
// when it is selected, still holds mask_id and has a real token (>= 0 and not
// mask_id itself); anything already committed is left alone. `changed` marks
// exactly the positions written, which is what a KV cache must refresh.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"

namespace dmkernels {
namespace {

template <typename X, typename T>
void commit_rows(at::Tensor& x, const at::Tensor& token, const at::Tensor& select, int64_t mask_id,
                 at::Tensor& changed, at::Tensor& remaining) {
  X* xp = x.data_ptr<X>();
  const T* tp = token.const_data_ptr<T>();
  const bool* sp = select.const_data_ptr<bool>();
  bool* cp = changed.data_ptr<bool>();
  int64_t* rp = remaining.data_ptr<int64_t>();
  const int64_t B = x.size(0), L = x.size(1);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), ts0 = token.stride(0), ts1 = token.stride(1);
  const int64_t ss0 = select.stride(0), ss1 = select.stride(1);
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      X* xr = xp + b * xs0;
      const T* tr = tp + b * ts0;
      const bool* sr = sp + b * ss0;
      bool* cr = cp + b * L;
      int64_t left = 0;
      // Branch-free: the data decides nothing about control flow.
      for (int64_t i = 0; i < L; ++i) {
        const int64_t current = xr[i * xs1];
        const int64_t tok = tr[i * ts1];
        const bool write = (current == mask_id) & sr[i * ss1] & (tok >= 0) & (tok != mask_id);
        const int64_t now = write ? tok : current;
        xr[i * xs1] = static_cast<X>(now);
        cr[i] = write;
        left += now == mask_id;
      }
      rp[b] = left;
    }
  });
}

// int64 tokens written into an int32 canvas would wrap. Reading them is free on
// the CPU, so they are checked before anything is written (not on the GPU).
void check_tokens_fit_int32(const at::Tensor& token, const at::Tensor& select) {
  const int64_t* tp = token.const_data_ptr<int64_t>();
  const bool* sp = select.const_data_ptr<bool>();
  const int64_t B = token.size(0), L = token.size(1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < L; ++i) {
      const int64_t tok = tp[b * token.stride(0) + i * token.stride(1)];
      TORCH_CHECK_VALUE(!sp[b * select.stride(0) + i * select.stride(1)] || tok <= std::numeric_limits<int32_t>::max(),
                        "dmkernels.commit_: token[", b, ", ", i, "] = ", tok, " does not fit x's dtype int32");
    }
  }
}

std::tuple<at::Tensor, at::Tensor> commit_cpu(at::Tensor& x, const at::Tensor& token,
                                              const at::Tensor& select, int64_t mask_id) {
  check_commit_args(x, token, select, mask_id);
  auto [changed, remaining] = new_commit_outputs(x);
  const auto run = [&](auto x_tag, auto t_tag) {
    commit_rows<decltype(x_tag), decltype(t_tag)>(x, token, select, mask_id, changed, remaining);
  };
  const bool x64 = x.scalar_type() == at::kLong, t64 = token.scalar_type() == at::kLong;
  if (!x64 && t64) check_tokens_fit_int32(token, select);
  if (x64 && t64) run(int64_t{}, int64_t{});
  else if (x64) run(int64_t{}, int32_t{});
  else if (t64) run(int32_t{}, int64_t{});
  else run(int32_t{}, int32_t{});
  return {changed, remaining};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("commit_", &commit_cpu); }

}  // namespace dmkernels
