// Argument checks shared by every backend's binding. Each message names the op
// and the argument, so `torch.ops.dmkernels.*` called directly fails as clearly
// as the Python wrappers in dmkernels/ops.py (which check the same things first).
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdlib>
#include <optional>

namespace dmkernels {

// DMKERNELS_POISON_OUTPUTS=1 (set by the test suite) fills freshly allocated
// outputs with garbage before a kernel runs, so an element the kernel forgets
// to write fails the comparison with the reference instead of passing as 0.
inline bool poison_outputs() {
  static const bool on = [] {
    const char* v = std::getenv("DMKERNELS_POISON_OUTPUTS");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "dmkernels.", op, ": ", name, " is on ", t.device(),
              " but ", ref_name, " is on ", ref.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* expected_from) {
  TORCH_CHECK(t.sizes() == expected, "dmkernels.", op, ": ", name, " must have shape ",
              expected, " (", expected_from, "), got ", t.sizes());
}

// dtype names as Python writes them (torch.int64, not Long), to match the wrappers' messages.
inline std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kBool: return "bool";
    default: return c10::toString(s);
  }
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto s : allowed) {
    if (t.scalar_type() == s) return;
  }
  std::string names;
  for (auto s : allowed) names += (names.empty() ? "" : ", ") + dtype_name(s);
  TORCH_CHECK(false, "dmkernels.", op, ": ", name, " must be one of (", names, "), got ",
              dtype_name(t.scalar_type()));
}

// [B, L] scores of a selection op; returns nothing, throws on the first problem.
inline void check_scores_2d(const char* op, const char* name, const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 2, "dmkernels.", op, ": ", name, " must be 2-D [B, L], got shape ",
              scores.sizes());
  check_dtype(op, name, scores, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

inline void check_eligible(const char* op, const at::Tensor& eligible, const at::Tensor& scores,
                           const char* scores_name) {
  check_same_device(op, "eligible", eligible, scores, scores_name);
  check_dtype(op, "eligible", eligible, {at::kBool});
  check_shape(op, "eligible", eligible, scores.sizes(), scores_name);
}

inline void check_token_stats_args(const at::Tensor& logits, double temperature, int64_t seed,
                                   int64_t offset, const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& rng) {
  const char* op = "token_stats";
  TORCH_CHECK(logits.dim() >= 1, "dmkernels.token_stats: logits must have a vocabulary dim [..., V]");
  check_dtype(op, "logits", logits, {at::kFloat, at::kBFloat16, at::kHalf});
  const int64_t V = logits.size(-1);
  TORCH_CHECK(V >= 1, "dmkernels.token_stats: logits has an empty vocabulary dim (V = 0)");
  TORCH_CHECK(V <= (int64_t{1} << 24), "dmkernels.token_stats: logits vocabulary dim V = ", V,
              " exceeds 2^24");
  TORCH_CHECK(logits.stride(-1) == 1 || V == 1,
              "dmkernels.token_stats: logits must have unit stride on the vocabulary dim, got stride ",
              logits.stride(-1));
  TORCH_CHECK(logits.numel() / V <= (int64_t{1} << 32),
              "dmkernels.token_stats: logits has more than 2^32 rows");
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "dmkernels.token_stats: temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK(seed >= 0, "dmkernels.token_stats: seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0, "dmkernels.token_stats: offset must be >= 0, got ", offset);
  if (positions.has_value()) {
    const auto& pos = *positions;
    check_same_device(op, "positions", pos, logits, "logits");
    check_dtype(op, "positions", pos, {at::kBool});
    check_shape(op, "positions", pos, logits.sizes().slice(0, logits.dim() - 1), "logits.shape[:-1]");
  }
  if (rng.has_value()) {
    check_same_device(op, "rng", *rng, logits, "logits");
    check_dtype(op, "rng", *rng, {at::kLong});
    check_shape(op, "rng", *rng, {2}, "(seed, offset)");
  }
}

}  // namespace dmkernels
