// token_stats on the GPU: device code only (no torch), compiled standalone by
// nvcc in CI (tests/test_cuda_compile.py) and used by token_stats.cu.
//
// Same derivation as csrc/cpu/token_stats.cpp: per row a running maximum m,
// S = sum exp(z - m), A = sum exp(z - m)(z - m), the top two values with the
// first argmax, and for sampling the best group key of the hierarchical
// Gumbel-max (noise.h) with its group (the lowest on ties). These tuples merge associatively:
//   m = max(ma, mb), S = ra Sa + rb Sb, A = ra (Aa + (ma - m) Sa) + rb (Ab + (mb - m) Sb)
// with r = exp(m_side - m), so the vocabulary is split across blocks when there
// are few rows (the dLLM case: a block of 32 positions times a small batch):
// grid = rows x splits, each block reduces its slice (threads, then warps), the
// partial tuples go to global memory, and a second kernel merges a row's splits
// in split order (deterministic, lowest column on every tie).
//
// Work unit: a thread takes 32 consecutive columns at a time, one noise group
// (noise.h). Sampling is the hierarchical Gumbel-max of noise.h: per group the
// thread computes m_g (max of w = x * c), the canonical exps and group_sum32,
// one group Gumbel (one Philox call for 32 columns) and the group key K_g; the
// tuple keeps the best (key, group), lowest group on ties. The merge then draws
// the element noise of the winning group only (8 Philox calls per row). When
// the scores describe the sampled distribution (T = 1 or tempered scores), the
// same exps give the sums: the group adds exp(m_g / s - m) (S_g, A_g + (m_g / s
// - m) S_g), one exp per element as at T = 0. Otherwise the sums take their own
// expf per element and the group pass runs only for groups whose key can still
// win (K_g <= m_g + kGroupKeyBound * s).
//
// token_stats_partial (a vocabulary slice [vocab_start, vocab_start + V) of
// rows row_offset + r) runs the same tuple kernel with kSlice = true: the slice
// is seen as a row of lead + V virtual columns, lead = vocab_start % 32, that
// starts at global column col_base = vocab_start - lead (a noise group edge);
// the first lead columns read as -inf (they never win and add 0 to the sums).
// Noise is that of global column col_base + u and row row_base + r. Then
// token_stats_partial_finish_kernel merges the splits as above and writes the
// eight unfinished fields (dmkernels/reference/token_stats_partial.py) instead
// of the scores. With kSlice = false the kernel is token_stats' own.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "../common/noise.h"

namespace dmkernels {
namespace cuda {

constexpr int kStatsThreads = 256;
// expf keeps denormals: exp(-100) is 3.7e-44, not 0. At -128 it is exactly 0,
// as on the CPU and in Triton (a lone finite entry then has entropy exactly 0);
// the floor also avoids 0 * -inf.
constexpr float kExpFloor = -128.0f;

struct StatsTuple {
  float m;       // running maximum of the scores
  float S, A;    // sums relative to m
  float top1;    // == m unless NaN
  float top2;
  int64_t top1_col;
  float best_y;      // sampling: best group key
  int64_t best_col;  // sampling: its group (of the virtual row)
  int bad;  // saw NaN or +inf
};

__host__ __device__ inline StatsTuple empty_stats() {
  StatsTuple t;
  t.m = -INFINITY;
  t.S = 0.f;
  t.A = 0.f;
  t.top1 = -INFINITY;
  t.top2 = -INFINITY;
  t.top1_col = INT64_MAX;
  t.best_y = -INFINITY;
  t.best_col = INT64_MAX;
  t.bad = 0;
  return t;
}

// Does (value, col) beat (best, best_col)? Higher value, then lower column.
__device__ __forceinline__ bool wins(float value, int64_t col, float best, int64_t best_col) {
  return value > best || (value == best && col < best_col);
}

// Combine two tuples. Associative and, with the column tie rule, independent of
// which side came first for the tokens; the float sums round by tree shape only.
__device__ __forceinline__ StatsTuple combine(const StatsTuple& a, const StatsTuple& b) {
  StatsTuple r;
  r.bad = a.bad | b.bad;
  r.m = fmaxf(a.m, b.m);
  if (r.m == -INFINITY) {
    r.S = 0.f;
    r.A = 0.f;
  } else {
    // <= 0; clamped because the difference of two finite maxima can overflow to
    // -inf, and exp(-inf) * (A - inf * S) would be NaN.
    const float da = fmaxf(a.m - r.m, kExpFloor), db = fmaxf(b.m - r.m, kExpFloor);
    const float ra = a.S > 0.f ? expf(da) : 0.f, rb = b.S > 0.f ? expf(db) : 0.f;
    r.S = ra * a.S + rb * b.S;
    r.A = (a.S > 0.f ? ra * (a.A + da * a.S) : 0.f) + (b.S > 0.f ? rb * (b.A + db * b.S) : 0.f);
  }
  const bool a_top = wins(a.top1, a.top1_col, b.top1, b.top1_col);
  r.top1 = a_top ? a.top1 : b.top1;
  r.top1_col = a_top ? a.top1_col : b.top1_col;
  r.top2 = fmaxf(fmaxf(a.top2, b.top2), a_top ? b.top1 : a.top1);
  const bool a_best = wins(a.best_y, a.best_col, b.best_y, b.best_col);
  r.best_y = a_best ? a.best_y : b.best_y;
  r.best_col = a_best ? a.best_col : b.best_col;
  return r;
}

__device__ __forceinline__ StatsTuple shfl_down(const StatsTuple& t, int delta) {
  StatsTuple r;
  r.m = __shfl_down_sync(0xffffffffu, t.m, delta);
  r.S = __shfl_down_sync(0xffffffffu, t.S, delta);
  r.A = __shfl_down_sync(0xffffffffu, t.A, delta);
  r.top1 = __shfl_down_sync(0xffffffffu, t.top1, delta);
  r.top2 = __shfl_down_sync(0xffffffffu, t.top2, delta);
  r.top1_col = __shfl_down_sync(0xffffffffu, t.top1_col, delta);
  r.best_y = __shfl_down_sync(0xffffffffu, t.best_y, delta);
  r.best_col = __shfl_down_sync(0xffffffffu, t.best_col, delta);
  r.bad = __shfl_down_sync(0xffffffffu, t.bad, delta);
  return r;
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

struct StatsParams {
  int64_t rows, V, splits, cols_per_split;  // cols_per_split is a multiple of 32
  bool sample, tempered_scores;
  bool shared;  // sampling, and the scores describe the sampled distribution
  float inv_temperature;
  KeyScales key_scales;  // y = x * c + g * s (noise.h)
  float inv_s;           // 1 / s, a power of two
  NoiseKey key;
  const int64_t* rng;  // device (seed, offset) overriding `key` when set (CUDA graphs)
  // denoise_stats: a device float32 temperature overriding inv_temperature,
  // key_scales and inv_s when set (read by the kernels, never by the host).
  const float* temperature = nullptr;
  // Read by the kSlice kernels only (token_stats_partial): V above counts `lead`
  // leading virtual -inf columns; column u is local column u - lead and global
  // column col_base + u (col_base a multiple of 32); the noise row is row_base + row.
  int64_t col_base = 0, lead = 0, row_base = 0;
};

// The scales of p.temperature, computed as the host does for a double T
// (inv_t = float32(1 / double(T))). Returns whether T is valid (finite, >=
// 2^-100); an invalid one leaves every row without a distribution.
__device__ __forceinline__ bool apply_device_temperature(StatsParams& p) {
  float t = *p.temperature;
  const bool ok = t >= static_cast<float>(kMinTemperature) && t < INFINITY;  // NaN fails both
  if (!ok) t = 1.0f;
  p.inv_temperature = static_cast<float>(1.0 / static_cast<double>(t));  // IEEE double division
  p.key_scales = key_scales(p.inv_temperature);
  p.inv_s = __fdiv_rn(1.0f, p.key_scales.s);
  return ok;
}

// One block per (row, split): fold 32-column groups thread by thread, then
// reduce the block and store one tuple per (row, split).
// row_offset[r] is the element offset of row r (leading dims may be strided).
// kSlice: a token_stats_partial slice (StatsParams' col_base, lead, row_base).
template <typename T, bool kSlice = false>
__global__ void __launch_bounds__(kStatsThreads)
    token_stats_partial_kernel(const T* __restrict__ logits, const int64_t* __restrict__ row_offset,
                               const bool* __restrict__ active, StatsParams p, StatsTuple* __restrict__ partial) {
  const int64_t row = blockIdx.x;
  const int64_t split = blockIdx.y;
  const bool t_ok = p.temperature == nullptr || apply_device_temperature(p);
  StatsTuple t = empty_stats();
  if (active == nullptr || active[row]) {
    const T* x = logits + row_offset[row];
    const int64_t c_begin = split * p.cols_per_split;
    const int64_t c_end = c_begin + p.cols_per_split < p.V ? c_begin + p.cols_per_split : p.V;
    const bool scale_scores = p.sample && p.tempered_scores;
    const NoiseKey key = p.rng != nullptr ? make_noise_key(static_cast<uint64_t>(p.rng[0]), static_cast<uint64_t>(p.rng[1]))
                                          : p.key;
    for (int64_t g0 = c_begin + 32 * static_cast<int64_t>(threadIdx.x); g0 < c_end; g0 += 32 * kStatsThreads) {
      // Raw logits: the scores scale them by 1 / T, the sampler by c
      // (noise.h), which x / T would not survive where it overflows.
      float xv[32];
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const int64_t c = g0 + j;
        if constexpr (kSlice) {
          xv[j] = c < c_end && c >= p.lead ? to_float(x[c - p.lead]) : -INFINITY;
        } else {
          xv[j] = c < c_end ? to_float(x[c]) : -INFINITY;
        }
      }
      const auto score = [&](int j) { return scale_scores ? __fmul_rn(xv[j], p.inv_temperature) : xv[j]; };
      // Top-2 and first argmax in column order; group maximum for the sums.
      float gmax = -INFINITY;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const float v = score(j);
        t.bad |= (v != v) | (v == INFINITY);
        if (v > t.top1) {
          t.top2 = t.top1;
          t.top1 = v;
          t.top1_col = g0 + j;
        } else if (v > t.top2) {
          t.top2 = v;
        }
        gmax = fmaxf(gmax, v);
      }
      // The sampler's group pass (noise.h): m_g, the canonical exps and their sum.
      float mg = -INFINITY, Sg = 0.f, Ag = 0.f;
      bool have_group = false;
      if (p.sample) {
        float w[32];
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          w[j] = __fmul_rn(xv[j], p.key_scales.c);
          mg = fmaxf(mg, w[j]);
        }
        // Two distributions: only groups whose key can still win (slack for the
        // rounding of K at large |K|).
        const float bound = t.best_y - fabsf(t.best_y) * 0x1p-20f;
        have_group = mg != -INFINITY &&
                     (p.shared || __fadd_rn(mg, __fmul_rn(kGroupKeyBound, p.key_scales.s)) >= bound);
        if (have_group) {
          float e[32];
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            const float d = __fmul_rn(__fadd_rn(w[j], -mg), p.inv_s);
            e[j] = exp_f32(d);
            Ag += e[j] * fmaxf(d, kExpFlush);  // a score sum: any order
          }
          Sg = group_sum32(e);
          const int64_t noise_g = (kSlice ? p.col_base + g0 : g0) / kNoiseGroup;
          const int64_t noise_row = kSlice ? p.row_base + row : row;
          const float G = gumbel_from_bits(group_noise_bits(key, static_cast<uint32_t>(noise_row),
                                                            static_cast<uint64_t>(noise_g)));
          const float K = group_key(mg, Sg, G, p.key_scales.s);
          const int64_t grp = g0 / kNoiseGroup;
          if (K > t.best_y || (K == t.best_y && grp < t.best_col)) {
            t.best_y = K;
            t.best_col = grp;
          }
        }
      }
      const float m_new = fmaxf(t.m, gmax);
      if (m_new != -INFINITY && m_new != INFINITY && m_new == m_new) {
        if (m_new > t.m && t.S > 0.f) {
          const float d = fmaxf(t.m - m_new, kExpFloor);  // finite maxima can differ by inf
          const float r = expf(d);
          t.A = r * (t.A + d * t.S);
          t.S = r * t.S;
        }
        t.m = m_new;
        if (p.shared) {
          // z = w / s: the group's exps relative to m_g / s are the scores' own.
          const float mgz = __fmul_rn(mg, p.inv_s);
          if (have_group && mgz > -INFINITY) {
            const float dd = fmaxf(mgz - t.m, kExpFloor);
            const float r = expf(dd);
            t.S += r * Sg;
            t.A += r * (Ag + dd * Sg);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            const float d = fmaxf(score(j) - t.m, kExpFloor);
            const float e = expf(d);
            t.S += e;
            t.A += e * d;
          }
        }
      }
    }
  }
  if (!t_ok) t.bad = 1;
  // Block reduction: warps by shuffles, then the warp results by warp 0.
  __shared__ StatsTuple warp_result[kStatsThreads / 32];
  for (int delta = 16; delta > 0; delta >>= 1) t = combine(t, shfl_down(t, delta));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_result[warp] = t;
  __syncthreads();
  if (warp == 0) {
    t = lane < kStatsThreads / 32 ? warp_result[lane] : empty_stats();
    for (int delta = 16; delta > 0; delta >>= 1) t = combine(t, shfl_down(t, delta));
    if (lane == 0) partial[row * p.splits + split] = t;
  }
}

// The column sampled inside the winning group `grp` of a row (virtual columns
// grp * 32 ..): y = x * c + g * s with the element noise of the global group,
// the lowest column among the maxima. Writes the column's score to *zt.
template <typename T, bool kSlice>
__device__ int64_t sample_in_group(const T* __restrict__ x, int64_t grp, int64_t row, const StatsParams& p,
                                   const NoiseKey& key, float* zt) {
  const int64_t lead = kSlice ? p.lead : 0;
  const int64_t noise_row = kSlice ? p.row_base + row : row;
  const int64_t noise_g = (kSlice ? p.col_base / kNoiseGroup : 0) + grp;
  float best = -INFINITY, best_x = -INFINITY;
  int64_t best_c = -1;
  for (int b = 0; b < 8; ++b) {
    const Philox4x32 w = noise_block(key, static_cast<uint32_t>(noise_row),
                                     static_cast<uint32_t>(noise_g * kNoiseBlocksPerGroup + b));
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      const int64_t c = grp * kNoiseGroup + word * 8 + b;  // noise.h layout
      const float v = c < p.V && c >= lead ? to_float(x[c - lead]) : -INFINITY;
      const float y = __fadd_rn(__fmul_rn(v, p.key_scales.c), __fmul_rn(gumbel_from_bits(w.v[word]), p.key_scales.s));
      if (best_c < 0 || y > best || (y == best && c < best_c)) {
        best = y;
        best_c = c;
        best_x = v;
      }
    }
  }
  *zt = p.tempered_scores ? __fmul_rn(best_x, p.inv_temperature) : best_x;
  return best_c;
}

// One thread per row: merge the row's splits in order and write the outputs.
template <typename T>
__global__ void token_stats_merge_kernel(const T* __restrict__ logits, const int64_t* __restrict__ row_offset,
                                         const StatsTuple* __restrict__ partial, const bool* __restrict__ active,
                                         StatsParams p, int64_t* __restrict__ token, float* __restrict__ confidence,
                                         float* __restrict__ margin, float* __restrict__ entropy) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= p.rows) return;
  if (active != nullptr && !active[row]) {
    token[row] = -1;
    confidence[row] = -INFINITY;
    margin[row] = -INFINITY;
    entropy[row] = INFINITY;
    return;
  }
  if (p.temperature != nullptr) apply_device_temperature(p);  // an invalid T: the tuples are bad
  StatsTuple t = partial[row * p.splits];
  for (int64_t s = 1; s < p.splits; ++s) t = combine(t, partial[row * p.splits + s]);
  if (t.bad || !(t.m > -INFINITY) || (p.sample && !(t.best_y > -INFINITY))) {
    // NaN, +inf, or only -inf: no distribution
    token[row] = -1;
    confidence[row] = NAN;
    margin[row] = NAN;
    entropy[row] = NAN;
    return;
  }
  const double S = t.S, A = t.A, m = t.m;
  double token_score = m;
  if (p.sample) {
    const NoiseKey key = p.rng != nullptr ? make_noise_key(static_cast<uint64_t>(p.rng[0]), static_cast<uint64_t>(p.rng[1]))
                                          : p.key;
    float zt;
    token[row] = sample_in_group<T, false>(logits + row_offset[row], t.best_col, row, p, key, &zt);
    token_score = zt;
  } else {
    token[row] = t.top1_col;
  }
  confidence[row] = static_cast<float>(exp(token_score - m) / S);
  margin[row] = static_cast<float>((1.0 - exp(static_cast<double>(t.top2) - m)) / S);
  const double h = log(S) - A / S;
  entropy[row] = static_cast<float>(h > 0.0 ? h : 0.0);
}

// token_stats_partial: one thread per row merges the row's splits in order and
// writes its eight fields, float32 [rows, 8] (MAX, SUM, ENT, SECOND, KEY, TOKEN,
// TOKEN_SCORE, INVALID; dmkernels/reference/token_stats_partial.py). Columns in
// the tuples are virtual: global = p.col_base + column.
template <typename T>
__global__ void token_stats_partial_finish_kernel(const T* __restrict__ logits, const int64_t* __restrict__ row_offset,
                                                  const StatsTuple* __restrict__ partial,
                                                  const bool* __restrict__ active, StatsParams p,
                                                  float* __restrict__ out) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= p.rows) return;
  float* o = out + row * 8;
  if (active != nullptr && !active[row]) {  // the empty slice
    o[0] = -INFINITY;
    o[1] = 0.f;
    o[2] = 0.f;
    o[3] = -INFINITY;
    o[4] = -INFINITY;
    o[5] = -1.f;
    o[6] = -INFINITY;
    o[7] = 0.f;
    return;
  }
  StatsTuple t = partial[row * p.splits];
  for (int64_t s = 1; s < p.splits; ++s) t = combine(t, partial[row * p.splits + s]);
  if (t.bad) {  // NaN or +inf: the invalid slice
    for (int f = 0; f < 8; ++f) o[f] = NAN;
    o[5] = -1.f;
    o[7] = 1.f;
    return;
  }
  // At T = 0 the token maximises x (= the score z), else the group key.
  const float key = p.sample ? t.best_y : t.top1;
  const bool has = key > -INFINITY;
  int64_t col = t.top1_col;
  float zt = t.top1;
  if (p.sample && has) {
    const NoiseKey nkey = p.rng != nullptr ? make_noise_key(static_cast<uint64_t>(p.rng[0]), static_cast<uint64_t>(p.rng[1]))
                                           : p.key;
    col = sample_in_group<T, true>(logits + row_offset[row], t.best_col, row, p, nkey, &zt);
  }
  o[0] = t.m;
  o[1] = t.S;  // 0 for an all -inf slice (combine, and no sums while m = -inf)
  o[2] = t.A;
  o[3] = t.top2;
  o[4] = key;
  o[5] = has ? static_cast<float>(p.col_base + col) : -1.f;
  o[6] = has ? zt : -INFINITY;
  o[7] = 0.f;
}

}  // namespace cuda
}  // namespace dmkernels
