// token_stats on the CPU: one pass over the vocabulary per row.
//
// Derivation (brief section 5). Over a row z_0 .. z_{V-1} with running maximum m:
//   S = sum_j exp(z_j - m)                 softmax normaliser
//   A = sum_j exp(z_j - m) * (z_j - m)     so that entropy = log S - A / S
// When the maximum grows from m to m', with r = exp(m - m'):
//   S' = r * S,   A' = r * (A + (m - m') * S)
// The top two values t1 >= t2 give confidence(argmax) = 1 / S and
// margin = (1 - exp(t2 - t1)) / S; a sampled token j has confidence exp(z_j - m) / S.
//
// The row is streamed in chunks of kChunk floats that stay in L1: each chunk is
// read from memory once (converted from bf16 / fp16 on the way) and then swept
// two or three times from cache: (1) max, top-2 and argmax per SIMD lane,
// (2) exp sums against the updated maximum, (3) Gumbel-max sampling when the
// temperature is positive. Lanes keep their own top-2 / argmax / sample and are
// merged at the end of the row, so the inner loops have no horizontal steps.
//
// Sampling draws noise only for groups of 32 columns that could still win:
// the Gumbel noise is bounded (kGumbelBound), so a group whose best x * c plus
// that bound times s (noise.h) is below the best perturbed value so far is skipped. Peaked
// (real model) distributions skip most of the vocabulary; the draw is exact.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>

#include "../common/noise.h"
#include "../checks.h"

namespace dmkernels {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kGroup = kNoiseGroup;  // 32 columns: 8 Philox blocks of 4 words
constexpr int64_t kChunk = 2048;         // floats per chunk: 8 KiB, L1-resident
static_assert(kChunk % kGroup == 0 && kLanes == 8, "the noise layout assumes 8-float vectors");
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// exp underflows to 0 below ln(FLT_MIN) ~ -87.3; clamping there keeps
// exp(d) * d at 0 instead of 0 * -inf = NaN for -inf logits.
constexpr float kExpFloor = -100.0f;

struct Params {
  bool sample;           // temperature > 0
  bool tempered_scores;  // scores describe softmax(x / T) instead of softmax(x)
  float inv_temperature; // float32(1 / T)
  KeyScales key_scales;  // y = x * c + g * s (noise.h)
  NoiseKey key;
};

struct RowOut {
  int64_t token;
  float confidence, margin, entropy;
};

// A row (or a vocabulary slice of one) reduced: what token_stats finishes and
// token_stats_partial stores (fields: dmkernels/reference/token_stats_partial.py).
struct RowReduction {
  bool invalid;       // a NaN or +inf logit
  float m;            // max score, -inf for an all -inf row
  double S, A;        // sum exp(z - m), sum exp(z - m)(z - m)
  float second;       // second-largest score, with multiplicity
  float key;          // what the token maximises: x (T = 0) or x / T + g
  int64_t token;      // global column of key, -1 when key is -inf
  float token_score;  // z of token
};

// Where a row's logits sit: `V` values at global columns [col_base + lead, ...).
// col_base is a multiple of the noise group, so a slice that starts mid-group is
// read as `lead` -inf columns followed by its values, and every noise group of
// the padded row is a global one.
struct Row {
  int64_t V, lead, col_base;
  uint32_t noise_row;
};

inline float hmax(const Vec& v) {
  std::array<float, kLanes> a;
  v.store(a.data());
  float r = a[0];
  for (int64_t l = 1; l < kLanes; ++l) r = std::max(r, a[l]);
  return r;
}

inline double hsum(const Vec& v) {
  std::array<float, kLanes> a;
  v.store(a.data());
  double r = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) r += a[l];
  return r;
}

// Copy n logits into dst as float.
template <typename T>
inline void load_floats(const T* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Vec v;
    if constexpr (std::is_same_v<T, float>) {
      v = Vec::loadu(src + i);
    } else {
      at::vec::load_to_float<T>(src + i, v);
    }
    v.store(dst + i);
  }
  for (; i < n; ++i) {
    dst[i] = static_cast<float>(src[i]);
  }
}

// Chunk [c0, c0 + n) of the padded row: `lead` -inf columns, then the V logits
// (see Row below). Fills dst and pads it with -inf to a whole number of noise
// groups: padding never wins and adds 0 to the sums. Returns the padded length.
template <typename T>
inline int64_t load_chunk(const T* x, int64_t lead, int64_t c0, int64_t n, float* dst) {
  const int64_t front = std::clamp<int64_t>(lead - c0, 0, n);
  for (int64_t i = 0; i < front; ++i) dst[i] = kNegInf;
  load_floats(x + (c0 + front - lead), n - front, dst + front);
  const int64_t padded = (n + kGroup - 1) / kGroup * kGroup;
  for (int64_t i = n; i < padded; ++i) dst[i] = kNegInf;
  return padded;
}

// Gumbel noise for the 32 columns of noise group `group` of `row`, as four
// vectors of 8 consecutive columns: the 8 Philox blocks of the group run side by
// side in SIMD lanes, and word j of the 8 blocks is exactly columns 8j .. 8j+7
// (layout in noise.h), so no transpose is needed.
#if defined(CPU_CAPABILITY_AVX2)
// High and low words of c * m per 32-bit lane (vpmuludq covers the even lanes).
inline void mulhilo8(__m256i c, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// log_f32 of noise.h on 8 lanes: the same operations in the same order.
inline __m256 log8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrt2), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // true lanes are -1: e + 1
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  __m256 q = _mm256_set1_ps(log_q(8));
  for (int i = 7; i >= 0; --i) q = _mm256_add_ps(_mm256_mul_ps(q, f), _mm256_set1_ps(log_q(i)));
  return _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(e), _mm256_set1_ps(kLn2)), _mm256_mul_ps(f, q));
}

inline void noise_group(const NoiseKey& key, uint32_t row, uint32_t group, Vec gumbel[4]) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(group * kNoiseBlocksPerGroup)),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(row));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(key.offset_lo));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(key.offset_hi));
  uint32_t k0 = key.seed_lo, k1 = key.seed_hi;
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, hi0, lo0);
    mulhilo8(c2, m1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const __m256i words[4] = {c0, c1, c2, c3};
  for (int j = 0; j < 4; ++j) {
    // u = (bits >> 9) * 2^-23 + 2^-24: exact, so no rounding question here.
    const __m256 u = _mm256_add_ps(
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(words[j], 9)), _mm256_set1_ps(0x1p-23f)),
        _mm256_set1_ps(0x1p-24f));
    const __m256 neg = _mm256_set1_ps(-0.0f);
    gumbel[j] = Vec(_mm256_xor_ps(log8(_mm256_xor_ps(log8(u), neg)), neg));
  }
}
#else
inline void noise_group(const NoiseKey& key, uint32_t row, uint32_t group, Vec gumbel[4]) {
  alignas(64) float g[4][kNoiseBlocksPerGroup];
  for (uint32_t b = 0; b < kNoiseBlocksPerGroup; ++b) {
    const Philox4x32 w = noise_block(key, row, group * kNoiseBlocksPerGroup + b);
    for (int j = 0; j < 4; ++j) g[j][b] = gumbel_from_bits(w.v[j]);
  }
  for (int j = 0; j < 4; ++j) gumbel[j] = Vec::loadu(g[j]);
}
#endif

template <typename T>
RowReduction reduce_row(const T* x, const Row& row, const Params& p, float* buf) {
  const int64_t V = row.V + row.lead;  // the padded row
  const bool scale_scores = p.sample && p.tempered_scores;
  const Vec lane_index = Vec::arange(0.f, 1.f);

  // Per-lane running state. Columns are carried as floats (exact below 2^24).
  Vec top1(kNegInf), top2(kNegInf), top1_col(0.f), nan_seen(0.f);
  Vec best_y(kNegInf), best_col(0.f);
  float m = kNegInf;      // running maximum of the scores
  double S = 0.0, A = 0.0;
  float best_y_bound = kNegInf;  // best perturbed value after the previous chunk

  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    // buf holds the raw logits: the scores scale them on the fly, the perturbed
    // values by c (noise.h), which x / T would not survive when it overflows.
    const int64_t padded = load_chunk(x, row.lead, c0, n, buf);
    const Vec vinv(p.inv_temperature);

    // (1) per-lane top-2 and first argmax (strict > keeps the lowest column).
    Vec col = Vec(static_cast<float>(c0)) + lane_index;
    for (int64_t i = 0; i < padded; i += kLanes, col = col + Vec(static_cast<float>(kLanes))) {
      const Vec z = scale_scores ? Vec::loadu(buf + i) * vinv : Vec::loadu(buf + i);
      nan_seen = nan_seen | z.isnan();
      const Vec greater = z > top1;
      top2 = at::vec::maximum(top2, at::vec::minimum(top1, z));
      top1_col = Vec::blendv(top1_col, col, greater);
      top1 = Vec::blendv(top1, z, greater);
    }

    // (2) exp sums against the new running maximum.
    const float m_new = std::max(m, hmax(top1));
    if (!std::isfinite(m_new)) {
      m = m_new;  // all -inf so far (nothing to add), or +inf / NaN (row invalid)
      if (!(m_new == kNegInf)) break;
      continue;
    }
    if (m_new > m && S > 0.0) {
      const double shift = static_cast<double>(m) - m_new;
      const double r = std::exp(shift);
      A = r * (A + shift * S);
      S = r * S;
    }
    m = m_new;
    const Vec vm(m), floor_(kExpFloor);
    Vec s_acc(0.f), a_acc(0.f);
    for (int64_t i = 0; i < padded; i += kLanes) {
      const Vec z = scale_scores ? Vec::loadu(buf + i) * vinv : Vec::loadu(buf + i);
      const Vec d = at::vec::maximum(z - vm, floor_);
      const Vec e = d.exp_u20();
      s_acc = s_acc + e;
      a_acc = a_acc + e * d;
    }
    S += hsum(s_acc);
    A += hsum(a_acc);

    // (3) Gumbel-max over the groups that can still beat best_y_bound.
    if (p.sample) {
      // Slack for the rounding of y = x / T + g at large |y|.
      const float bound = best_y_bound - std::fabs(best_y_bound) * 0x1p-20f;
      const Vec vbound(bound), vgumbel(kGumbelBound * p.key_scales.s), vc(p.key_scales.c);
      const Vec vs(p.key_scales.s);
      for (int64_t g = 0; g < padded; g += kGroup) {
        Vec base[kGroup / kLanes];
        Vec reach(kNegInf);
        for (int64_t j = 0; j < kGroup / kLanes; ++j) {
          base[j] = Vec::loadu(buf + g + j * kLanes) * vc;
          reach = at::vec::maximum(reach, base[j]);
        }
        if (((reach + vgumbel) > vbound).zero_mask() == (1 << kLanes) - 1) continue;
        Vec gumbel[4];
        noise_group(p.key, row.noise_row, static_cast<uint32_t>((row.col_base + c0 + g) / kGroup), gumbel);
        for (int64_t j = 0; j < kGroup / kLanes; ++j) {
          const Vec y = base[j] + gumbel[j] * vs;
          const Vec greater = y > best_y;
          const Vec gcol = Vec(static_cast<float>(c0 + g + j * kLanes)) + lane_index;
          best_col = Vec::blendv(best_col, gcol, greater);
          best_y = Vec::blendv(best_y, y, greater);
        }
      }
      best_y_bound = hmax(best_y);
    }
  }

  RowReduction out;
  const bool has_nan = nan_seen.zero_mask() != (1 << kLanes) - 1;
  out.invalid = has_nan || m == std::numeric_limits<float>::infinity() || std::isnan(m);
  if (out.invalid) return out;
  out.m = m;
  out.S = S;
  out.A = A;

  // Merge lanes: winner = lowest column among lanes holding the maximum.
  std::array<float, kLanes> t1, t2, t1c;
  top1.store(t1.data());
  top2.store(t2.data());
  top1_col.store(t1c.data());
  int64_t win = -1;
  for (int64_t l = 0; l < kLanes; ++l) {
    if (t1[l] == m && (win < 0 || t1c[l] < t1c[win])) win = l;
  }
  out.second = kNegInf;
  for (int64_t l = 0; l < kLanes; ++l) {
    out.second = std::max(out.second, t2[l]);
    if (l != win) out.second = std::max(out.second, t1[l]);
  }

  int64_t col;  // in the padded row
  if (p.sample) {
    std::array<float, kLanes> by, bc;
    best_y.store(by.data());
    best_col.store(bc.data());
    int64_t lane = 0;
    for (int64_t l = 1; l < kLanes; ++l) {
      if (by[l] > by[lane] || (by[l] == by[lane] && bc[l] < bc[lane])) lane = l;
    }
    out.key = by[lane];
    col = static_cast<int64_t>(bc[lane]);
  } else {
    out.key = m;
    col = static_cast<int64_t>(t1c[win]);
  }
  if (out.key == kNegInf) {  // an all -inf slice
    out.token = -1;
    out.token_score = kNegInf;
    return out;
  }
  out.token = row.col_base + col;
  if (p.sample) {
    const float xt = static_cast<float>(x[col - row.lead]);
    out.token_score = scale_scores ? xt * p.inv_temperature : xt;
  } else {
    out.token_score = m;
  }
  return out;
}

// token_stats of a whole row from its reduction.
inline RowOut finish_row(const RowReduction& r) {
  if (r.invalid || r.m == kNegInf) {
    // No distribution: NaN logits, a +inf logit, or nothing but -inf.
    return RowOut{-1, kNaN, kNaN, kNaN};
  }
  RowOut out;
  out.token = r.token;
  out.confidence = static_cast<float>(std::exp(static_cast<double>(r.token_score) - r.m) / r.S);
  out.margin = static_cast<float>((1.0 - std::exp(static_cast<double>(r.second) - r.m)) / r.S);
  out.entropy = static_cast<float>(std::max(0.0, std::log(r.S) - r.A / r.S));
  return out;
}

// The eight float32 fields of token_stats_partial.
inline void store_partial(const RowReduction& r, float* out) {
  if (r.invalid) {
    const float v[8] = {kNaN, kNaN, kNaN, kNaN, kNaN, -1.0f, kNaN, 1.0f};
    std::copy(v, v + 8, out);
    return;
  }
  const bool empty = r.m == kNegInf;
  out[0] = r.m;
  out[1] = empty ? 0.0f : static_cast<float>(r.S);
  out[2] = empty ? 0.0f : static_cast<float>(r.A);
  out[3] = r.second;
  out[4] = r.key;
  out[5] = static_cast<float>(r.token);
  out[6] = r.token_score;
  out[7] = 0.0f;
}

inline void store_empty_partial(float* out) {
  const float v[8] = {kNegInf, 0.0f, 0.0f, kNegInf, kNegInf, -1.0f, kNegInf, 0.0f};
  std::copy(v, v + 8, out);
}

Params make_params(double temperature, bool tempered_scores, int64_t seed, int64_t offset) {
  Params p;
  p.sample = temperature > 0.0;
  p.tempered_scores = tempered_scores;
  p.inv_temperature = p.sample ? static_cast<float>(1.0 / temperature) : 1.0f;
  p.key_scales = key_scales(p.inv_temperature);
  p.key = make_noise_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  return p;
}

// (seed, offset) from the rng tensor when given (a CPU tensor: reading it is free).
void read_rng(const char* op, const std::optional<at::Tensor>& rng, int64_t& seed, int64_t& offset) {
  if (!rng.has_value()) return;
  const at::Tensor r = rng->contiguous();
  seed = r.const_data_ptr<int64_t>()[0];
  offset = r.const_data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(seed >= 0 && offset >= 0, "dmkernels.", op, ": rng must hold (seed, offset) >= 0, got (", seed,
              ", ", offset, ")");
}

// Calls visit(r, active, x_row) for every row r of logits in parallel; x_row points
// at the row's V logits (leading dims may have any strides, V has unit stride).
template <typename Visit>
void for_each_row(const at::Tensor& logits, const std::optional<at::Tensor>& positions, Visit&& visit) {
  const int64_t V = logits.size(-1);
  const int64_t rows = logits.numel() / V;
  if (rows == 0) return;
  at::Tensor active;
  if (positions.has_value()) active = positions->contiguous();
  const bool* active_ptr = active.defined() ? active.data_ptr<bool>() : nullptr;
  const int64_t lead = logits.dim() - 1;
  const auto sizes = logits.sizes();
  const auto strides = logits.strides();
  const auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / V);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      alignas(64) float buf[kChunk];
      for (int64_t r = begin; r < end; ++r) {
        int64_t offset_elems = 0, rem = r;
        for (int64_t d = lead - 1; d >= 0; --d) {
          offset_elems += (rem % sizes[d]) * strides[d];
          rem /= sizes[d];
        }
        visit(r, active_ptr == nullptr || active_ptr[r], base + offset_elems, buf);
      }
    });
  };
  switch (logits.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "unreachable: dtype checked above");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_stats_cpu(
    const at::Tensor& logits, double temperature, int64_t seed, int64_t offset,
    bool tempered_scores, const std::optional<at::Tensor>& positions, const std::optional<at::Tensor>& rng) {
  check_token_stats_args(logits, temperature, seed, offset, positions, rng);
  read_rng("token_stats", rng, seed, offset);
  auto [token, confidence, margin, entropy] = new_token_stats_outputs(logits);
  const Params p = make_params(temperature, tempered_scores, seed, offset);
  const int64_t V = logits.size(-1);
  int64_t* tok = token.data_ptr<int64_t>();
  float* conf = confidence.data_ptr<float>();
  float* marg = margin.data_ptr<float>();
  float* ent = entropy.data_ptr<float>();
  for_each_row(logits, positions, [&](int64_t r, bool active, const auto* x, float* buf) {
    if (!active) {
      tok[r] = -1;
      conf[r] = kNegInf;
      marg[r] = kNegInf;
      ent[r] = std::numeric_limits<float>::infinity();
      return;
    }
    const RowOut o = finish_row(reduce_row(x, Row{V, 0, 0, static_cast<uint32_t>(r)}, p, buf));
    tok[r] = o.token;
    conf[r] = o.confidence;
    marg[r] = o.margin;
    ent[r] = o.entropy;
  });
  return {token, confidence, margin, entropy};
}

at::Tensor token_stats_partial_cpu(const at::Tensor& logits, double temperature, int64_t seed, int64_t offset,
                                   bool tempered_scores, const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& rng, int64_t vocab_start, int64_t row_offset) {
  check_token_stats_partial_args(logits, temperature, seed, offset, positions, rng, vocab_start, row_offset);
  read_rng("token_stats_partial", rng, seed, offset);
  at::Tensor out = new_token_stats_partial_output(logits);
  const Params p = make_params(temperature, tempered_scores, seed, offset);
  const int64_t V = logits.size(-1);
  const int64_t lead = vocab_start % kGroup;
  float* dst = out.data_ptr<float>();
  for_each_row(logits, positions, [&](int64_t r, bool active, const auto* x, float* buf) {
    if (!active) return store_empty_partial(dst + 8 * r);
    const Row row{V, lead, vocab_start - lead, static_cast<uint32_t>(row_offset + r)};
    store_partial(reduce_row(x, row, p, buf), dst + 8 * r);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) {
  m.impl("token_stats", &token_stats_cpu);
  m.impl("token_stats_partial", &token_stats_partial_cpu);
}

}  // namespace dmkernels
