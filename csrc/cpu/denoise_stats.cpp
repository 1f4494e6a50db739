// denoise_stats on the CPU (semantics: dmkernels/reference/denoise_stats.py).
//
// Per row, two sweeps over the same logits (a row of 262144 floats is 1 MB, so
// the second sweep mostly hits cache):
//   (1) token_stats' own row reduction with tempered scores (token_stats.h): the
//       token and the entropy, the same code as token_stats and so the same bits;
//   (2) z = x / T with an IEEE float32 division (vdivps; setup.py builds with
//       -ffp-contract=off and no fast-math, so nothing turns it into a multiply),
//       rounded to the logits' dtype as torch's `logits / T` is, the first
//       argmax of z per SIMD lane (merged at the end, lowest column on ties),
//       and z stored to processed_out in its dtype when given.
// The sampler keeps the multiply by float32(1 / T) (x / T may differ by an ulp):
// tokens stay token_stats' while argmax and processed_out stay torch's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../checks.h"
#include "token_stats.h"

namespace dmkernels {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-lane first maximum of the rounded quotients; columns as floats (exact below 2^24).
struct LaneMax {
  Vec best{kNegInf}, col{0.f};
};

inline void lane_update(LaneMax& t, const Vec& z, const Vec& col) {
  const Vec greater = z > t.best;  // strict: a lane keeps its lowest column; NaN never wins
  t.col = Vec::blendv(t.col, col, greater);
  t.best = Vec::blendv(t.best, z, greater);
}

// Round float32 values to T and back (torch's `.to(T)`: round to nearest even).
template <typename T>
inline float round_to(float z) {
  if constexpr (std::is_same_v<T, float>) {
    return z;
  } else {
    return static_cast<float>(T(z));
  }
}

template <typename U>
inline void store_scalar(U* out, float z) {
  if constexpr (std::is_same_v<U, float>) {
    *out = z;
  } else {
    *out = U(z);
  }
}

// Sweep (2) over one row: returns the first argmax of z = round_T(x / t) (0 when
// every z is -inf, as torch.argmax) and writes z to out (when U is not void).
template <typename T, typename U>
int64_t divide_row(const T* x, int64_t V, float t, U* out) {
  constexpr bool kWrite = !std::is_void_v<U>;
  constexpr int64_t kStep = 2 * kLanes;  // one reduced-precision vector: two float vectors
  const Vec vt(t), step(static_cast<float>(kLanes));
  LaneMax lanes;
  Vec col = Vec::arange(0.f, 1.f);
  int64_t i = 0;
  for (; i + kStep <= V; i += kStep) {
    Vec a, b;
    if constexpr (std::is_same_v<T, float>) {
      a = Vec::loadu(x + i);
      b = Vec::loadu(x + i + kLanes);
    } else {
      std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(x + i));
    }
    a = a / vt;
    b = b / vt;
    if constexpr (!std::is_same_v<T, float>) {
      const auto rounded = at::vec::convert_from_float<T>(a, b);
      std::tie(a, b) = at::vec::convert_to_float<T>(rounded);
      if constexpr (std::is_same_v<U, T>) rounded.store(out + i);
    }
    if constexpr (kWrite && !std::is_same_v<U, T>) {
      if constexpr (std::is_same_v<U, float>) {
        a.store(out + i);
        b.store(out + i + kLanes);
      } else {
        at::vec::convert_from_float<U>(a, b).store(out + i);
      }
    } else if constexpr (kWrite && std::is_same_v<T, float>) {  // U == T == float
      a.store(out + i);
      b.store(out + i + kLanes);
    }
    lane_update(lanes, a, col);
    col = col + step;
    lane_update(lanes, b, col);
    col = col + step;
  }
  // Merge the lanes: the maximum, then the lowest column holding it.
  std::array<float, kLanes> best, cols;
  lanes.best.store(best.data());
  lanes.col.store(cols.data());
  float m = kNegInf;
  int64_t arg = -1;
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t c = static_cast<int64_t>(cols[l]);
    if (best[l] > m || (best[l] == m && arg >= 0 && c < arg)) {
      m = best[l];
      arg = c;
    }
  }
  // The tail, after every vector column: it wins only when strictly greater.
  for (; i < V; ++i) {
    const float z = round_to<T>(static_cast<float>(x[i]) / t);
    if constexpr (kWrite) store_scalar(out + i, z);
    if (z > m) {
      m = z;
      arg = i;
    }
  }
  return arg < 0 ? 0 : arg;
}

template <typename T>
int64_t divide_row_into(const T* x, int64_t V, float t, void* out, at::ScalarType out_type) {
  if (out == nullptr) return divide_row<T, void>(x, V, t, nullptr);
  switch (out_type) {
    case at::kFloat: return divide_row<T, float>(x, V, t, static_cast<float*>(out));
    case at::kHalf: return divide_row<T, at::Half>(x, V, t, static_cast<at::Half*>(out));
    case at::kBFloat16: return divide_row<T, at::BFloat16>(x, V, t, static_cast<at::BFloat16*>(out));
    default: TORCH_CHECK(false, "unreachable: processed_out's dtype was checked");
  }
}

// Element offset of flat row r of a tensor over its leading dims (any strides).
inline int64_t row_offset(int64_t r, at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 2; d >= 0; --d) {
    off += (r % sizes[d]) * strides[d];
    r /= sizes[d];
  }
  return off;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> denoise_stats_cpu(
    const at::Tensor& logits, double temperature, const std::optional<at::Tensor>& temperature_tensor, int64_t seed,
    int64_t offset, const std::optional<at::Tensor>& rng, const std::optional<at::Tensor>& processed_out,
    const std::optional<at::Tensor>& frozen) {
  check_denoise_stats_args(logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen);
  read_cpu_rng("denoise_stats", rng, seed, offset);
  // The sampler divides 1 by T in double (a Python float's own value; a tensor's
  // float32 value), the quotient z by T rounded to float32.
  const double t_sample = temperature_tensor.has_value() ? static_cast<double>(temperature_tensor->item<float>())
                                                         : temperature;
  const float t32 = static_cast<float>(t_sample);
  auto [token, argmax, entropy] = new_denoise_stats_outputs(logits);
  const int64_t V = logits.size(-1);
  const int64_t rows = logits.numel() / V;
  if (rows == 0) return {token, argmax, entropy};
  const TokenStatsParams p = token_stats_params(t_sample, /*tempered_scores=*/true, seed, offset);
  at::Tensor frozen_c;
  if (frozen.has_value()) frozen_c = frozen->contiguous();
  const bool* frozen_ptr = frozen_c.defined() ? frozen_c.const_data_ptr<bool>() : nullptr;
  int64_t* tok = token.data_ptr<int64_t>();
  int64_t* am = argmax.data_ptr<int64_t>();
  float* ent = entropy.data_ptr<float>();
  const at::IntArrayRef sizes = logits.sizes(), strides = logits.strides();
  char* out_base = processed_out.has_value() ? static_cast<char*>(processed_out->data_ptr()) : nullptr;
  const at::ScalarType out_type = processed_out.has_value() ? processed_out->scalar_type() : at::kFloat;
  const int64_t out_size = processed_out.has_value() ? processed_out->element_size() : 0;
  const at::IntArrayRef out_strides = processed_out.has_value() ? processed_out->strides() : strides;

  const auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / V);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      alignas(64) float scratch[kTokenStatsScratch];
      for (int64_t r = begin; r < end; ++r) {
        if (frozen_ptr != nullptr && frozen_ptr[r]) {
          tok[r] = -1;
          am[r] = -1;
          ent[r] = std::numeric_limits<float>::infinity();
          continue;
        }
        const scalar_t* x = base + row_offset(r, sizes, strides);
        const TokenStatsRow s = token_stats_row(x, V, static_cast<uint32_t>(r), p, scratch);
        void* out = out_base == nullptr ? nullptr : out_base + row_offset(r, sizes, out_strides) * out_size;
        // A row without a distribution still gets its processed_out row.
        const int64_t arg = (s.token >= 0 || out != nullptr) ? divide_row_into(x, V, t32, out, out_type) : -1;
        tok[r] = s.token;
        am[r] = s.token >= 0 ? arg : -1;
        ent[r] = s.entropy;
      }
    });
  };
  switch (logits.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "unreachable: dtype checked above");
  }
  return {token, argmax, entropy};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) {
  m.impl("denoise_stats", &denoise_stats_cpu);
}

}  // namespace dmkernels
