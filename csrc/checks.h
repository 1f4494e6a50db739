// Argument checks shared by every backend's binding. Each message names the op
// and the argument, so `torch.ops.dmkernels.*` called directly fails as clearly,
// and with the same exception types, as the Python checks of the registry
// (dmkernels/_registry.py, run by the wrappers and the Triton ops): a wrong dtype
// is TORCH_CHECK_TYPE (TypeError), any other bad argument TORCH_CHECK_VALUE
// (ValueError). tests/test_validation.py holds every backend to that.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <optional>

#include "common/noise.h"

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
  TORCH_CHECK_VALUE(t.device() == ref.device(), "dmkernels.", op, ": ", name, " is on ", t.device(),
              " but ", ref_name, " is on ", ref.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* expected_from) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "dmkernels.", op, ": ", name, " must have shape ",
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
  TORCH_CHECK_TYPE(false, "dmkernels.", op, ": ", name, " must be one of (", names, "), got ",
              dtype_name(t.scalar_type()));
}

// [B, L] scores of a selection op; returns nothing, throws on the first problem.
inline void check_scores_2d(const char* op, const char* name, const at::Tensor& scores) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "dmkernels.", op, ": ", name, " must be 2-D [B, L], got shape ",
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
                                   const std::optional<at::Tensor>& rng, const char* op = "token_stats") {
  TORCH_CHECK_VALUE(logits.dim() >= 1, "dmkernels.", op, ": logits must have a vocabulary dim [..., V]");
  check_dtype(op, "logits", logits, {at::kFloat, at::kBFloat16, at::kHalf});
  const int64_t V = logits.size(-1);
  TORCH_CHECK_VALUE(V >= 1, "dmkernels.", op, ": logits has an empty vocabulary dim (V = 0)");
  TORCH_CHECK_VALUE(V <= (int64_t{1} << 24), "dmkernels.", op, ": logits vocabulary dim V = ", V, " exceeds 2**24");
  TORCH_CHECK_VALUE(logits.stride(-1) == 1 || V == 1, "dmkernels.", op,
              ": logits must have unit stride on the vocabulary dim, got stride ", logits.stride(-1));
  TORCH_CHECK_VALUE(logits.numel() / V <= (int64_t{1} << 32), "dmkernels.", op, ": logits has more than 2**32 rows");
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0.0, "dmkernels.", op,
              ": temperature must be finite and >= 0, got ", temperature);
  // Below 2^-100 the scaled noise leaves float32's normal range (common/noise.h).
  TORCH_CHECK_VALUE(temperature == 0.0 || temperature >= kMinTemperature, "dmkernels.", op,
                    ": temperature must be 0 or >= 2**-100 (about 7.9e-31), got ", temperature);
  TORCH_CHECK_VALUE(seed >= 0, "dmkernels.", op, ": seed must be >= 0, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "dmkernels.", op, ": offset must be >= 0, got ", offset);
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

// token_stats_partial: the token_stats checks plus the slice's place in the
// vocabulary (global columns travel as float32, exact below 2^24) and in the rows.
inline void check_token_stats_partial_args(const at::Tensor& logits, double temperature, int64_t seed,
                                           int64_t offset, const std::optional<at::Tensor>& positions,
                                           const std::optional<at::Tensor>& rng, int64_t vocab_start,
                                           int64_t row_offset) {
  const char* op = "token_stats_partial";
  check_token_stats_args(logits, temperature, seed, offset, positions, rng, op);
  TORCH_CHECK_VALUE(vocab_start >= 0, "dmkernels.token_stats_partial: vocab_start must be >= 0, got ", vocab_start);
  TORCH_CHECK_VALUE(vocab_start + logits.size(-1) <= (int64_t{1} << 24),
              "dmkernels.token_stats_partial: vocab_start + V = ", vocab_start + logits.size(-1),
              " exceeds 2**24");
  // Sampling draws per noise group of 32 columns (common/noise.h): a slice must
  // hold whole groups to reproduce the whole row's draw.
  TORCH_CHECK_VALUE(temperature == 0.0 || vocab_start % 32 == 0,
                    "dmkernels.token_stats_partial: vocab_start must be a multiple of 32 when temperature > 0, got ",
                    vocab_start);
  TORCH_CHECK_VALUE(row_offset >= 0, "dmkernels.token_stats_partial: row_offset must be >= 0, got ", row_offset);
  TORCH_CHECK_VALUE(row_offset + logits.numel() / logits.size(-1) <= (int64_t{1} << 32),
              "dmkernels.token_stats_partial: row_offset + rows exceeds 2**32");
}

// The CPU bindings' (seed, offset) from the rng tensor when given (a CPU tensor:
// reading it is free; the CUDA kernels read it on the device).
inline void read_cpu_rng(const char* op, const std::optional<at::Tensor>& rng, int64_t& seed, int64_t& offset) {
  if (!rng.has_value()) return;
  const at::Tensor r = rng->contiguous();
  seed = r.const_data_ptr<int64_t>()[0];
  offset = r.const_data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(seed >= 0 && offset >= 0, "dmkernels.", op, ": rng must hold (seed, offset) >= 0, got (", seed,
                    ", ", offset, ")");
}

// Per-op checks shared by the CPU and CUDA bindings.

inline void check_select_topk_args(const at::Tensor& scores, const at::Tensor& k, const at::Tensor& eligible) {
  const char* op = "select_topk";
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  check_same_device(op, "k", k, scores, "scores");
  check_dtype(op, "k", k, {at::kLong, at::kInt});
  check_shape(op, "k", k, {scores.size(0)}, "one count per row of scores");
}

// select_threshold / select_factor: [B, L] scores, eligible, and a non-NaN parameter.
inline void check_scored_rule_args(const char* op, const at::Tensor& scores, const at::Tensor& eligible,
                                   const char* param_name, double param) {
  check_scores_2d(op, "scores", scores);
  check_eligible(op, eligible, scores, "scores");
  TORCH_CHECK_VALUE(!std::isnan(param), "dmkernels.", op, ": ", param_name, " is NaN");
}

inline void check_select_entropy_bounded_args(const at::Tensor& error, const at::Tensor& entropy,
                                              const at::Tensor& eligible, double gamma) {
  const char* op = "select_entropy_bounded";
  check_scores_2d(op, "error", error);
  check_scores_2d(op, "entropy", entropy);
  check_same_device(op, "entropy", entropy, error, "error");
  check_shape(op, "entropy", entropy, error.sizes(), "error.shape");
  check_eligible(op, eligible, error, "error");
  TORCH_CHECK_VALUE(!std::isnan(gamma), "dmkernels.select_entropy_bounded: gamma is NaN");
}

inline void check_select_group_args(const at::Tensor& eligible, const at::Tensor& groups, const at::Tensor& step) {
  const char* op = "select_group";
  TORCH_CHECK_VALUE(eligible.dim() == 2, "dmkernels.select_group: eligible must be 2-D [B, L], got shape ",
              eligible.sizes());
  check_dtype(op, "eligible", eligible, {at::kBool});
  check_same_device(op, "groups", groups, eligible, "eligible");
  check_same_device(op, "step", step, eligible, "eligible");
  check_dtype(op, "groups", groups, {at::kLong, at::kInt});
  check_dtype(op, "step", step, {at::kLong, at::kInt});
  const int64_t B = eligible.size(0), L = eligible.size(1);
  TORCH_CHECK_VALUE(groups.sizes() == at::IntArrayRef{L} || groups.sizes() == eligible.sizes(),
              "dmkernels.select_group: groups must have shape [L] or [B, L] = ", eligible.sizes(), ", got ",
              groups.sizes());
  TORCH_CHECK_VALUE(step.dim() == 0 || step.sizes() == at::IntArrayRef{B},
              "dmkernels.select_group: step must be a scalar or have shape [B] = [", B, "], got ", step.sizes());
}

inline void check_commit_args(const at::Tensor& x, const at::Tensor& token, const at::Tensor& select,
                              int64_t mask_id) {
  const char* op = "commit_";
  TORCH_CHECK_VALUE(x.dim() == 2, "dmkernels.commit_: x must be 2-D [B, L], got shape ", x.sizes());
  check_dtype(op, "x", x, {at::kLong, at::kInt});
  check_dtype(op, "token", token, {at::kLong, at::kInt});
  check_dtype(op, "select", select, {at::kBool});
  check_same_device(op, "token", token, x, "x");
  check_same_device(op, "select", select, x, "x");
  check_shape(op, "token", token, x.sizes(), "x.shape");
  check_shape(op, "select", select, x.sizes(), "x.shape");
  TORCH_CHECK_VALUE(mask_id >= 0, "dmkernels.commit_: mask_id must be >= 0, got ", mask_id);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kLong || mask_id <= std::numeric_limits<int32_t>::max(),
              "dmkernels.commit_: mask_id = ", mask_id, " does not fit x's dtype int32");
  // Elements of x sharing memory would be written by several positions at once.
  TORCH_CHECK_VALUE(at::has_internal_overlap(x) != at::MemOverlap::Yes,
                    "dmkernels.commit_: x has elements that share memory (e.g. from expand()); "
                    "pass a tensor whose elements are distinct, e.g. x.clone()");
}

// commit_'s outputs: changed [B, L] and remaining [B] (poisoned under the test flag).
inline std::tuple<at::Tensor, at::Tensor> new_commit_outputs(const at::Tensor& x) {
  at::Tensor changed = at::empty(x.sizes(), x.options().dtype(at::kBool));
  at::Tensor remaining = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  if (poison_outputs()) {
    changed.fill_(true);
    remaining.fill_(-7);
  }
  return {changed, remaining};
}

inline void check_edit_args(const at::Tensor& x, const at::Tensor& token, const at::Tensor& confidence,
                            const at::Tensor& editable, double threshold) {
  const char* op = "edit_";
  TORCH_CHECK_VALUE(x.dim() == 2, "dmkernels.edit_: x must be 2-D [B, L], got shape ", x.sizes());
  check_dtype(op, "x", x, {at::kLong, at::kInt});
  check_dtype(op, "token", token, {at::kLong, at::kInt});
  check_dtype(op, "confidence", confidence, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  check_dtype(op, "editable", editable, {at::kBool});
  check_same_device(op, "token", token, x, "x");
  check_same_device(op, "confidence", confidence, x, "x");
  check_same_device(op, "editable", editable, x, "x");
  check_shape(op, "token", token, x.sizes(), "x.shape");
  check_shape(op, "confidence", confidence, x.sizes(), "x.shape");
  check_shape(op, "editable", editable, x.sizes(), "x.shape");
  TORCH_CHECK_VALUE(!std::isnan(threshold), "dmkernels.edit_: threshold is NaN");
  TORCH_CHECK_VALUE(at::has_internal_overlap(x) != at::MemOverlap::Yes,
                    "dmkernels.edit_: x has elements that share memory (e.g. from expand()); "
                    "pass a tensor whose elements are distinct, e.g. x.clone()");
}

// edit_ compares `confidence > threshold` as PyTorch does with a Python float:
// in the confidence's dtype, the threshold converted to it like torch's copy
// kernel does (static_cast; half and bfloat16 through float, as c10 converts).
// The result is exact in float64, where the kernels compare.
inline double edit_threshold_in_dtype(double threshold, at::ScalarType confidence_dtype) {
  if (confidence_dtype == at::kDouble) return threshold;
  // IEEE rounding to float spelled out: a static_cast beyond float's range is
  // undefined in C++ (x86 rounds it as below, which is what torch gets).
  const double half_ulp_past_max = 0x1.ffffffp127;  // ties round to the even neighbour, 2^128 = inf
  const float big = std::fabs(threshold) >= half_ulp_past_max ? INFINITY : std::numeric_limits<float>::max();
  const float f = std::fabs(threshold) > std::numeric_limits<float>::max() ? (threshold > 0 ? big : -big)
                                                                             : static_cast<float>(threshold);
  switch (confidence_dtype) {
    case at::kHalf: return static_cast<double>(static_cast<float>(c10::Half(f)));
    case at::kBFloat16: return static_cast<double>(static_cast<float>(c10::BFloat16(f)));
    default: return static_cast<double>(f);
  }
}

// edit_'s outputs: changed [B, L] and edits per row [B] (poisoned under the test flag).
inline std::tuple<at::Tensor, at::Tensor> new_edit_outputs(const at::Tensor& x) {
  at::Tensor changed = at::empty(x.sizes(), x.options().dtype(at::kBool));
  at::Tensor edits = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  if (poison_outputs()) {
    changed.fill_(true);
    edits.fill_(-7);
  }
  return {changed, edits};
}

inline void check_renoise_args(const at::Tensor& canvas, const at::Tensor& sample, const at::Tensor& accept,
                               const std::optional<at::Tensor>& frozen, int64_t vocab_size, int64_t seed,
                               int64_t offset, const std::optional<at::Tensor>& rng) {
  const char* op = "renoise_";
  TORCH_CHECK_VALUE(canvas.dim() == 2, "dmkernels.renoise_: canvas must be 2-D [B, L], got shape ", canvas.sizes());
  check_dtype(op, "canvas", canvas, {at::kLong, at::kInt});
  check_same_device(op, "sample", sample, canvas, "canvas");
  check_dtype(op, "sample", sample, {at::kLong, at::kInt});
  check_shape(op, "sample", sample, canvas.sizes(), "canvas.shape");
  check_same_device(op, "accept", accept, canvas, "canvas");
  check_dtype(op, "accept", accept, {at::kBool});
  check_shape(op, "accept", accept, canvas.sizes(), "canvas.shape");
  if (frozen.has_value()) {
    check_same_device(op, "frozen", *frozen, canvas, "canvas");
    check_dtype(op, "frozen", *frozen, {at::kBool});
    check_shape(op, "frozen", *frozen, {canvas.size(0)}, "one flag per row");
  }
  TORCH_CHECK_VALUE(vocab_size >= 1, "dmkernels.renoise_: vocab_size must be >= 1, got ", vocab_size);
  TORCH_CHECK_VALUE(canvas.scalar_type() == at::kLong || vocab_size <= (int64_t{1} << 31),
                    "dmkernels.renoise_: vocab_size = ", vocab_size,
                    " does not fit canvas's dtype int32 (tokens up to 2**31 - 1)");
  TORCH_CHECK_VALUE(seed >= 0, "dmkernels.renoise_: seed must be >= 0, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "dmkernels.renoise_: offset must be >= 0, got ", offset);
  if (rng.has_value()) {
    check_same_device(op, "rng", *rng, canvas, "canvas");
    check_dtype(op, "rng", *rng, {at::kLong});
    check_shape(op, "rng", *rng, {2}, "(seed, offset)");
  }
  TORCH_CHECK_VALUE(at::has_internal_overlap(canvas) != at::MemOverlap::Yes,
                    "dmkernels.renoise_: canvas has elements that share memory (e.g. from expand()); "
                    "pass a tensor whose elements are distinct, e.g. canvas.clone()");
}

// renoise_'s output: random tokens written per row [B] (poisoned under the test flag).
inline at::Tensor new_renoise_output(const at::Tensor& canvas) {
  at::Tensor noised = at::empty({canvas.size(0)}, canvas.options().dtype(at::kLong));
  if (poison_outputs()) noised.fill_(-7);
  return noised;
}

// token_stats' outputs, shaped logits.shape[:-1] (poisoned under the test flag).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> new_token_stats_outputs(const at::Tensor& logits) {
  auto row_shape = logits.sizes().vec();
  row_shape.pop_back();
  auto token = at::empty(row_shape, logits.options().dtype(at::kLong));
  auto confidence = at::empty(row_shape, logits.options().dtype(at::kFloat));
  auto margin = at::empty_like(confidence);
  auto entropy = at::empty_like(confidence);
  if (poison_outputs()) {
    token.fill_(-7);
    for (auto* t : {&confidence, &margin, &entropy}) t->fill_(12345.0);
  }
  return {token, confidence, margin, entropy};
}

// float32 [..., 8] partials of token_stats_partial, poisoned like the others.
inline at::Tensor new_token_stats_partial_output(const at::Tensor& logits) {
  auto shape = logits.sizes().vec();
  shape.back() = 8;
  auto out = at::empty(shape, logits.options().dtype(at::kFloat));
  if (poison_outputs()) out.fill_(12345.0);
  return out;
}

// denoise_stats: token_stats' checks (logits, seed, offset, rng), a temperature
// > 0 given as a double or as a 0-d float32 tensor on the logits' device (its
// value checked only on the CPU, where reading it is free), the optional
// processed_out written in place and the frozen rows.
inline void check_positive_temperature(const char* op, double t) {
  TORCH_CHECK_VALUE(!std::isnan(t), "dmkernels.", op, ": temperature is NaN");
  TORCH_CHECK_VALUE(std::isfinite(t) && t >= kMinTemperature, "dmkernels.", op,
                    ": temperature must be finite and >= 2**-100 (about 7.9e-31), got ", t);
}

inline void check_denoise_stats_args(const at::Tensor& logits, double temperature,
                                     const std::optional<at::Tensor>& temperature_tensor, int64_t seed,
                                     int64_t offset, const std::optional<at::Tensor>& rng,
                                     const std::optional<at::Tensor>& processed_out,
                                     const std::optional<at::Tensor>& frozen) {
  const char* op = "denoise_stats";
  check_token_stats_args(logits, 1.0, seed, offset, std::nullopt, rng, op);
  check_positive_temperature(op, temperature);
  if (temperature_tensor.has_value()) {
    const auto& t = *temperature_tensor;
    check_same_device(op, "temperature", t, logits, "logits");
    check_dtype(op, "temperature", t, {at::kFloat});
    check_shape(op, "temperature", t, {}, "a 0-d tensor");
    if (t.device().is_cpu()) check_positive_temperature(op, static_cast<double>(t.item<float>()));
  }
  if (processed_out.has_value()) {
    const auto& out = *processed_out;
    check_same_device(op, "processed_out", out, logits, "logits");
    check_dtype(op, "processed_out", out, {at::kFloat, at::kBFloat16, at::kHalf});
    check_shape(op, "processed_out", out, logits.sizes(), "logits.shape");
    TORCH_CHECK_VALUE(out.stride(-1) == 1 || out.size(-1) == 1, "dmkernels.denoise_stats: processed_out must "
                      "have unit stride on the vocabulary dim, got stride ", out.stride(-1));
    TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes,
                      "dmkernels.denoise_stats: processed_out has elements that share memory (e.g. from expand()); "
                      "pass a tensor whose elements are distinct, e.g. processed_out.clone()");
  }
  if (frozen.has_value()) {
    check_same_device(op, "frozen", *frozen, logits, "logits");
    check_dtype(op, "frozen", *frozen, {at::kBool});
    check_shape(op, "frozen", *frozen, logits.sizes().slice(0, logits.dim() - 1), "logits.shape[:-1]");
  }
}

// denoise_stats' outputs (token, argmax, entropy), shaped logits.shape[:-1] (poisoned under the test flag).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> new_denoise_stats_outputs(const at::Tensor& logits) {
  auto row_shape = logits.sizes().vec();
  row_shape.pop_back();
  auto token = at::empty(row_shape, logits.options().dtype(at::kLong));
  auto argmax = at::empty_like(token);
  auto entropy = at::empty(row_shape, logits.options().dtype(at::kFloat));
  if (poison_outputs()) {
    token.fill_(-7);
    argmax.fill_(-7);
    entropy.fill_(12345.0);
  }
  return {token, argmax, entropy};
}

}  // namespace dmkernels
