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
// two or three times from cache. At T = 0 (reduce_row_argmax): (1) max, top-2
// and argmax per SIMD lane, (2) exp sums against the updated maximum; lanes
// keep their own top-2 / argmax and are merged at the end of the row, so those
// loops have no horizontal steps. At T > 0 (reduce_row_sample): (1) the maxima
// of the 32-column noise groups (the row's maximum and second value follow from
// them and one rescan of the top group at the end), (2) exp sums as at T = 0
// when there are two distributions, (3) the sampler's group pass. There float32
// chunks, read in place, are prefetched one chunk ahead during the exps.
//
// Sampling (T > 0) is the hierarchical Gumbel-max of noise.h: per noise group
// of 32 columns the exact max m_g of w = x * c, the canonical exps
// e_j = exp_f32((w_j - m_g) / s) and their canonical sum S_g (the same bits on
// every backend), one Gumbel per group from the group stream, the group key
// K_g = m_g + (log_f32(S_g) + G_g) s, and per-element noise only inside the
// winning group at the end of the row. When the scores describe the sampled
// distribution (T = 1 or tempered scores: z = w / s) the same e_j feed the
// sums, S = sum_g exp(m_g / s - m) S_g and A = sum_g exp(m_g / s - m)
// (A_g + (m_g / s - m) S_g) with A_g = sum_j e_j (w_j - m_g) / s, so sampling
// costs one exp per element like the argmax (step (2) is skipped). Otherwise
// (two distributions) step (2) runs on x and the group pass skips groups whose
// key cannot beat the best one of the earlier chunks (group_cannot_win). The
// group uniforms are drawn 256 groups at a time, and the two logs that make a
// Gumbel of one only for groups whose key could still win (gumbel_bound): after
// the first chunks a few percent of the groups. Keys of the others are -inf;
// none of this changes which group or token wins, or any sum.
//
// Builds (setup.py, DMKERNELS_CPU_ARCH): generic (at::vec's portable Vec and
// the scalar noise of noise.h), AVX2 (8-float Vec, the sampler's Philox, logs
// and exps in 8 lanes) and AVX-512 (16 lanes: steps (1) and (2) in intrinsics,
// the group maxima and pass 16 groups at a time, the group noise eight noise
// groups per Philox sweep in four independent chains; the winning group's
// element noise stays on the 8-lane code).
// The noise layout is defined on 8-float vectors, and 16 lanes hold two of them
// side by side (two groups' Philox blocks, or a group's two halves). Every
// quantity that picks a token is computed by the same IEEE operations in the
// same order on every build, so all three return the same tokens
// (tests/test_generic_build.py); the sums S and A are added in a
// build-dependent order (within tolerance).
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
#include "token_stats.h"

namespace dmkernels {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kGroup = kNoiseGroup;  // 32 columns: 8 Philox blocks of 4 words
constexpr int64_t kChunk = 2048;         // floats per chunk: 8 KiB, L1-resident
static_assert(kChunk == kTokenStatsScratch, "token_stats.h sizes the callers' scratch");
static_assert(kChunk % kGroup == 0 && kGroup % kLanes == 0, "chunks of whole groups, groups of whole vectors");
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// exp underflows to 0 below ln(FLT_MIN) ~ -87.3; clamping there keeps
// exp(d) * d at 0 instead of 0 * -inf = NaN for -inf logits.
constexpr float kExpFloor = -100.0f;

using Params = TokenStatsParams;  // token_stats.h: shared with denoise_stats.cpp

constexpr int64_t kChunkGroups = kChunk / kNoiseGroup;
// Group Gumbels are drawn for this many groups (four chunks) at a time.
constexpr int64_t kGumbelBatch = 8 * kNoiseGroup;
static_assert(kGumbelBatch % kChunkGroups == 0, "batches of whole chunks");

// With two distributions the group pass skips the exps of a group that cannot
// win: its key K = m + (log_f32(S) + G) s (group_key) with log_f32(S) replaced
// by kLogGroupMass, which exceeds log_f32(S) for every S <= 32 (log 32 = 3.466),
// computed by the same unfused steps. Each step rounds monotonically, so K is at
// most this bound, and a bound below the best key of the earlier chunks means a
// key that cannot beat it (nor tie it: the lower group wins ties). Tighter than
// kGroupKeyBound because the group's Gumbel G is drawn first.
constexpr float kLogGroupMass = 3.5f;
inline bool group_cannot_win(float m, float G, float s, float best) { return m + (kLogGroupMass + G) * s < best; }

// An upper bound of the Gumbel gumbel_from_bits makes of the uniform u, without
// its two logs: G = -log(-log u) <= -log(1 - u) (-log u >= 1 - u), and for
// t = 1 - u (exact) -log2 t <= 127 - bits(t) / 2^23 (bits(t) / 2^23 - 127 is
// linear between powers of two, below the concave log2). 0.01 covers the
// roundings of log_f32 and of this arithmetic (checked over all 2^23 u: G is
// at least 0.01 below). The group pass draws a group's exact Gumbel only when
// its key, with this bound, could still win.
inline float gumbel_bound(float u) {
  const float t = 1.0f - u;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  return (127.0f - static_cast<float>(bits) * 0x1p-23f) * 0.6931472f + 0.01f;
}

// Prefetches of the next chunk of a row, `step` bytes per call of next(), spread
// over a pass that is bound by arithmetic: the chunk's memory reads then overlap
// that arithmetic instead of following it (the hardware prefetcher only follows
// the loads the code issues, and between two chunks it issues none).
struct Prefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  int64_t step = 0;
  inline void next() {
    for (int64_t i = 0; i < step && p < end; i += 64, p += 64) __builtin_prefetch(p, 0, 3);
  }
};

using RowOut = TokenStatsRow;

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

// Gumbel noise for the 32 columns of noise group `group` of `row`, written to
// gumbel[0 .. 32): the 8 Philox blocks of the group run side by side in 8 SIMD
// lanes, and word j of the 8 blocks is exactly columns 8j .. 8j+7 (layout in
// noise.h), so no transpose is needed. The AVX-512 build runs this 8-lane code.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
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

// kGumbel false: the uniforms u instead (gumbels() maps them on).
template <bool kGumbel = true>
inline void noise_group(const NoiseKey& key, uint32_t row, uint32_t group, float* gumbel) {
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
    _mm256_storeu_ps(gumbel + 8 * j, kGumbel ? _mm256_xor_ps(log8(_mm256_xor_ps(log8(u), neg)), neg) : u);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// noise_group for groups `group` and `group + 1` at once (gumbel[0 .. 64)): their
// 16 Philox blocks in 16 lanes, the operations of the 8-lane code lane for lane
// (vpmullq-free: the same even / odd vpmuludq split), so the same bits.
inline void mulhilo16(__m512i c, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

inline __m512 log16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007FFFFF)),
                                                 _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(kSqrt2), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  __m512 q = _mm512_set1_ps(log_q(8));
  for (int i = 7; i >= 0; --i) q = _mm512_add_ps(_mm512_mul_ps(q, f), _mm512_set1_ps(log_q(i)));
  return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(e), _mm512_set1_ps(kLn2)), _mm512_mul_ps(f, q));
}

template <bool kGumbel = true>
inline void noise_group2(const NoiseKey& key, uint32_t row, uint32_t group, float* gumbel) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(group * kNoiseBlocksPerGroup)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(row));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(key.offset_lo));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(key.offset_hi));
  uint32_t k0 = key.seed_lo, k1 = key.seed_hi;
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(c0, m0, hi0, lo0);
    mulhilo16(c2, m1, hi1, lo1);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const __m512i words[4] = {c0, c1, c2, c3};
  const __m512 neg = _mm512_set1_ps(-0.0f);
  for (int j = 0; j < 4; ++j) {
    const __m512 u = _mm512_add_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(words[j], 9)), _mm512_set1_ps(0x1p-23f)),
        _mm512_set1_ps(0x1p-24f));
    const __m512 g = kGumbel ? _mm512_xor_ps(log16(_mm512_xor_ps(log16(u), neg)), neg) : u;
    _mm256_storeu_ps(gumbel + 8 * j, _mm512_castps512_ps256(g));  // lanes 0-7: group
    _mm256_storeu_ps(gumbel + 32 + 8 * j, _mm512_extractf32x8_ps(g, 1));  // lanes 8-15: group + 1
  }
}

// noise_group2 for groups group .. group + 7 (gumbel[0 .. 256)): four
// independent Philox chains side by side, so that their latencies overlap.
template <bool kGumbel = true>
inline void noise_group8(const NoiseKey& key, uint32_t row, uint32_t group, float* gumbel) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0[4], c1[4], c2[4], c3[4];
  for (int c = 0; c < 4; ++c) {
    c0[c] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>((group + 2 * c) * kNoiseBlocksPerGroup)), lanes);
    c1[c] = _mm512_set1_epi32(static_cast<int>(row));
    c2[c] = _mm512_set1_epi32(static_cast<int>(key.offset_lo));
    c3[c] = _mm512_set1_epi32(static_cast<int>(key.offset_hi));
  }
  uint32_t k0 = key.seed_lo, k1 = key.seed_hi;
  for (int round = 0; round < 10; ++round) {
    const __m512i vk0 = _mm512_set1_epi32(static_cast<int>(k0)), vk1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int c = 0; c < 4; ++c) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0[c], m0, hi0, lo0);
      mulhilo16(c2[c], m1, hi1, lo1);
      c0[c] = _mm512_xor_si512(_mm512_xor_si512(hi1, c1[c]), vk0);
      c1[c] = lo1;
      c2[c] = _mm512_xor_si512(_mm512_xor_si512(hi0, c3[c]), vk1);
      c3[c] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const __m512 neg = _mm512_set1_ps(-0.0f);
  for (int c = 0; c < 4; ++c) {
    const __m512i words[4] = {c0[c], c1[c], c2[c], c3[c]};
    float* out = gumbel + 64 * c;
    for (int j = 0; j < 4; ++j) {
      const __m512 u = _mm512_add_ps(
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(words[j], 9)), _mm512_set1_ps(0x1p-23f)),
          _mm512_set1_ps(0x1p-24f));
      const __m512 g = kGumbel ? _mm512_xor_ps(log16(_mm512_xor_ps(log16(u), neg)), neg) : u;
      _mm256_storeu_ps(out + 8 * j, _mm512_castps512_ps256(g));
      _mm256_storeu_ps(out + 32 + 8 * j, _mm512_extractf32x8_ps(g, 1));
    }
  }
}
#endif

// exp_f32 of noise.h on 8 lanes: the same operations in the same order (FMA3
// where the spec has DMK_FMA; fnmadd(a, b, c) = fma(-a, b, c)). A NaN d would
// turn into -86 here (max_ps returns its second operand): rows with a NaN are
// invalid whatever is sampled.
inline __m256 exp8(__m256 d) {
  d = _mm256_max_ps(d, _mm256_set1_ps(kExpFlush));
  const __m256 t = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2e), _mm256_set1_ps(kExpRound));
  const __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(kExpRound));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpC1), d);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpC2), r);
  __m256 q = _mm256_set1_ps(kExpQ5);
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ4));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ3));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ2));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ1));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
  const __m256 p = _mm256_fmadd_ps(r, q, _mm256_set1_ps(1.0f));
  const __m256i sbits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(static_cast<int>(127u - 0x4B400000u))), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(sbits));
}

#if defined(CPU_CAPABILITY_AVX512)
// exp_f32 of noise.h on 16 lanes for d already clamped (d >= kExpFlush, as
// group_d clamps it): exp8 lane for lane, the same bits.
inline __m512 exp16_clamped(__m512 d) {
  const __m512 t = _mm512_fmadd_ps(d, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kExpRound));
  const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(kExpRound));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpC1), d);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpC2), r);
  __m512 q = _mm512_set1_ps(kExpQ5);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ4));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ3));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ2));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ1));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  // p * 2^n by vscalefps: with d >= -86, n >= -124 and p in (0.7, 1.5), so both
  // 2^n and the product are normal and exact, the bits of exp8's p * 2^n.
  return _mm512_scalef_ps(_mm512_fmadd_ps(r, q, _mm512_set1_ps(1.0f)), n);
}

// d = (w - m) / s for one vector of a group (w = x * c), clamped at kExpFlush
// as exp_f32 clamps it and as the A term uses it. A multiply by c that is by 1 is
// left out (x * 1 == x: the same bits). kS: 0 when 1 / s = 1 (no multiply),
// 2 for (w - m) * (1 / s) as the spec writes it, 1 for the same value in one
// fused step, fma(w, 1 / s, vm) with vm = -(m / s): 1 / s = 2^k is a power of
// two, so -(m / s) is exact when finite (the caller checks), and rounding the
// exact (w - m) 2^k once gives round(w - m) 2^k, the spec's value, short of
// overflow, which only reaches d far below the clamp, where both clamp alike
// (a subnormal w - m is exact to begin with).
template <bool kMulC, int kS>
inline __m512 group_d(const float* src, __m512 vc, __m512 vm, __m512 vis) {
  __m512 w = _mm512_loadu_ps(src);
  if constexpr (kMulC) w = _mm512_mul_ps(w, vc);
  __m512 d;
  if constexpr (kS == 1) {
    d = _mm512_fmadd_ps(w, vis, vm);
  } else {
    d = _mm512_sub_ps(w, vm);
    if constexpr (kS == 2) d = _mm512_mul_ps(d, vis);
  }
  return _mm512_max_ps(d, _mm512_set1_ps(kExpFlush));
}

// The sums of a live group g alone (contract as group_pass), the 16-lane group
// pass's path for groups it does not take 16 at a time: a group is two vectors,
// and group_sum32's first fold (a[k] + a[k + 16]) is their sum, its second
// (a[k] + a[k + 8]) the sum of that vector's halves, the rest as in the 8-lane
// version.
template <bool kMulC, int kS>
inline void group_sums(const float* buf, int64_t g, bool want_a, __m512 vc, float inv_s, const float* gm, float* gS,
                       float* gA) {
  if constexpr (kS == 1) {  // group_d's fused form needs -(m / s) finite
    if (!std::isfinite(gm[g] * -inv_s)) return group_sums<kMulC, 2>(buf, g, want_a, vc, inv_s, gm, gS, gA);
  }
  const float* src = buf + g * kGroup;
  const __m512 vis = _mm512_set1_ps(inv_s);
  const __m512 vm = _mm512_set1_ps(kS == 1 ? gm[g] * -inv_s : gm[g]);
  const __m512 d0 = group_d<kMulC, kS>(src, vc, vm, vis), d1 = group_d<kMulC, kS>(src + 16, vc, vm, vis);
  const __m512 e0 = exp16_clamped(d0), e1 = exp16_clamped(d1);
  const __m512 t16 = _mm512_add_ps(e0, e1);  // a[k] + a[k + 16]
  const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(t16), _mm512_extractf32x8_ps(t16, 1));  // + a[k + 8]
  __m256 a = _mm256_setzero_ps();
  if (want_a) {
    const __m512 a16 = _mm512_fmadd_ps(e1, d1, _mm512_mul_ps(e0, d0));
    a = _mm256_add_ps(_mm512_castps512_ps256(a16), _mm512_extractf32x8_ps(a16, 1));
  }
  // + a[k + 4], + a[k + 2], + a[k + 1]; the A sum rides along in the upper half.
  __m256 x = _mm256_add_ps(_mm256_permute2f128_ps(t, a, 0x20), _mm256_permute2f128_ps(t, a, 0x31));
  x = _mm256_add_ps(x, _mm256_shuffle_ps(x, x, _MM_SHUFFLE(3, 2, 3, 2)));
  x = _mm256_add_ps(x, _mm256_shuffle_ps(x, x, _MM_SHUFFLE(1, 1, 1, 1)));
  gS[g] = _mm256_cvtss_f32(x);
  gA[g] = _mm_cvtss_f32(_mm256_extractf128_ps(x, 1));
}

// Reduces v[0 .. 16) lane-wise in halving folds, with op (add or max, both
// commutative): the result's lane l(g) (fold_order) holds
// ((v[g][k] op v[g][k + 8]) op (.. k + 4)) op .., the fold order of
// group_sum32 after its first step. Each step pairs two vectors with a blend
// and one shuffle (the operands of each op are those of the fold, in either
// order). Destroys v.
template <typename Op>
inline __m512 fold16x16(__m512* v, Op op) {
  for (int i = 0; i < 8; ++i)  // a[k] op a[k + 8]: [A.lo, B.hi] op [A.hi, B.lo]
    v[i] = op(_mm512_mask_blend_ps(0xFF00, v[2 * i], v[2 * i + 1]), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x4E));
  const __m512i quads = _mm512_setr_epi32(4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 24, 25, 26, 27);
  for (int i = 0; i < 4; ++i)  // a[k] op a[k + 4]: [A.q0, B.q1, A.q2, B.q3] op [A.q1, B.q0, A.q3, B.q2]
    v[i] = op(_mm512_mask_blend_ps(0xF0F0, v[2 * i], v[2 * i + 1]), _mm512_permutex2var_ps(v[2 * i], quads, v[2 * i + 1]));
  for (int i = 0; i < 2; ++i)  // a[k] op a[k + 2] within each quad: [a0 a1 b2 b3] op [a2 a3 b0 b1]
    v[i] = op(_mm512_mask_blend_ps(0xCCCC, v[2 * i], v[2 * i + 1]),
              _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 3, 2)));
  return op(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),  // a[0] op a[1]
            _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// fold16x16's result in group order: lane l(g) = g / 4 + 4 b(g % 4), where b
// swaps the two bits (found by tracing the steps above symbolically).
inline __m512 fold_order(__m512 r) {
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15), r);
}

// The maxima of the raw logits of a chunk's ng groups (contract as the 8-lane
// version below), 16 groups at a time sharing the horizontal folds.
inline bool group_maxima(const float* buf, int64_t ng, float* gx) {
  const auto vmax = [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); };
  __mmask16 nan = 0;
  int64_t g = 0;
  for (; g + 16 <= ng; g += 16) {
    const float* src = buf + g * kGroup;
    __m512 v[16];
    for (int k = 0; k < 16; ++k) {
      const __m512 a = _mm512_loadu_ps(src + 32 * k), b = _mm512_loadu_ps(src + 32 * k + 16);
      nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);  // either one a NaN
      v[k] = _mm512_max_ps(a, b);
    }
    _mm512_storeu_ps(gx + g, fold_order(fold16x16(v, vmax)));
  }
  for (; g < ng; ++g) {
    const float* src = buf + g * kGroup;
    const __m512 a = _mm512_loadu_ps(src), b = _mm512_loadu_ps(src + 16);
    nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
    gx[g] = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
  }
  return nan != 0;
}

// The group pass on 16 lanes (contract as the 8-lane one below): 16 groups at
// a time sharing the horizontal folds (fold16x16), else group by group
// (group_sums). Every element's exp is exp8's and every S_g is folded in
// group_sum32's order, so the group results, and with them the tokens, are
// those of the AVX2 build.
template <bool kMulC, bool kMulS>
inline void group_pass_t(const float* buf, int64_t ng, const Params& p, bool want_a, float best, const float* gG,
                         const float* gm, float* gS, float* gA, Prefetch& pf) {
  constexpr int kS = kMulS ? 1 : 0;  // group_d
  const float inv_s = p.inv_s;
  const __m512 vc = _mm512_set1_ps(p.key_scales.c), vis = _mm512_set1_ps(inv_s);
  const auto vadd = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
  const float s = p.key_scales.s;
  const bool skip = best > kNegInf;
  int64_t g = 0;
  for (; g + 16 <= ng; g += 16) {
    for (int k = 0; k < 16; ++k) pf.next();
    const float* src = buf + g * kGroup;
    const __m512 m16 = _mm512_loadu_ps(gm + g);
    const __mmask16 empty = _mm512_cmp_ps_mask(m16, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ);
    __mmask16 skipped = 0;
    if (skip) {  // group_cannot_win, lane for lane
      const __m512 bound = _mm512_add_ps(
          m16, _mm512_mul_ps(_mm512_add_ps(_mm512_set1_ps(kLogGroupMass), _mm512_loadu_ps(gG + g)), _mm512_set1_ps(s)));
      skipped = _mm512_cmp_ps_mask(bound, _mm512_set1_ps(best), _CMP_LT_OQ) & ~empty;
    }
    __mmask16 unfused = 0;  // -(m / s) overflows: group_sums takes the spec's steps
    if constexpr (kS == 1) {
      unfused = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_mul_ps(m16, _mm512_set1_ps(-inv_s))),
                                   _mm512_set1_ps(std::numeric_limits<float>::infinity()), _CMP_EQ_OQ) & ~empty;
    }
    if (skipped | unfused) {  // some groups need no exps, or other ones: group by group
      for (int k = 0; k < 16; ++k) {
        if ((empty >> k) & 1) {
          gS[g + k] = 0.0f;
          gA[g + k] = 0.0f;
        } else if ((skipped >> k) & 1) {
          gS[g + k] = -1.0f;
        } else {
          group_sums<kMulC, kS>(buf, g + k, want_a, vc, inv_s, gm, gS, gA);
        }
      }
      continue;
    }
    __m512 v[16], a[16];
    for (int k = 0; k < 16; ++k) {
      const __m512 vm = _mm512_set1_ps(kS == 1 ? gm[g + k] * -inv_s : gm[g + k]);
      const __m512 d0 = group_d<kMulC, kS>(src + 32 * k, vc, vm, vis);
      const __m512 d1 = group_d<kMulC, kS>(src + 32 * k + 16, vc, vm, vis);
      const __m512 e0 = exp16_clamped(d0), e1 = exp16_clamped(d1);
      v[k] = _mm512_add_ps(e0, e1);  // a[k] + a[k + 16]
      if (want_a) a[k] = _mm512_fmadd_ps(e1, d1, _mm512_mul_ps(e0, d0));
    }
    // Empty groups (all -inf: their exps are NaN) get S = A = 0.
    _mm512_storeu_ps(gS + g, _mm512_maskz_mov_ps(~empty, fold_order(fold16x16(v, vadd))));
    if (want_a) _mm512_storeu_ps(gA + g, _mm512_maskz_mov_ps(~empty, fold_order(fold16x16(a, vadd))));
  }
  for (; g < ng; ++g) {
    pf.next();
    if (gm[g] == kNegInf) {
      gS[g] = 0.0f;
      gA[g] = 0.0f;
    } else if (skip && group_cannot_win(gm[g], gG[g], s, best)) {
      gS[g] = -1.0f;
    } else {
      group_sums<kMulC, kS>(buf, g, want_a, vc, inv_s, gm, gS, gA);
    }
  }
}
#else
// The maxima of the raw logits of a chunk's ng groups into gx (the sampler's
// m_g is gx * c: c > 0, and rounding is monotonic, so that is the maximum of
// w = x * c too); true when the chunk holds a NaN.
inline bool group_maxima(const float* buf, int64_t ng, float* gx) {
  __m256 nan = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const float* src = buf + g * kGroup;
    const __m256 x0 = _mm256_loadu_ps(src), x1 = _mm256_loadu_ps(src + 8);
    const __m256 x2 = _mm256_loadu_ps(src + 16), x3 = _mm256_loadu_ps(src + 24);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(x0, x1, _CMP_UNORD_Q), _mm256_cmp_ps(x2, x3, _CMP_UNORD_Q)));
    const __m256 mx = _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    gx[g] = _mm_cvtss_f32(h);
  }
  return _mm256_movemask_ps(nan) != 0;
}

// The sampler's group pass over a chunk of ng groups (noise.h), given the group
// maxima gm of w = x * c: gS[g] = group_sum32 of the canonical exps, 0 for an
// empty group (gm = -inf), -1 for a group that cannot beat `best`
// (group_cannot_win with its Gumbel gG[g]; -inf: no skipping); gA[g] =
// sum e (w - gm) / s (a score sum, any order) when want_a. A multiply by c or
// 1 / s that is by 1 is left out (the same bits). (A row with a NaN is invalid
// whatever this computes for it.)
template <bool kMulC, bool kMulS>
inline void group_pass_t(const float* buf, int64_t ng, const Params& p, bool want_a, float best, const float* gG,
                         const float* gm, float* gS, float* gA, Prefetch& pf) {
  const __m256 vc = _mm256_set1_ps(p.key_scales.c);
  const __m256 vis = _mm256_set1_ps(p.inv_s), lo = _mm256_set1_ps(kExpFlush);
  const float s = p.key_scales.s;
  const bool skip = best > kNegInf;
  for (int64_t g = 0; g < ng; ++g) {
    pf.next();
    const float m = gm[g];
    if (m == kNegInf) {
      gS[g] = 0.0f;
      gA[g] = 0.0f;
      continue;
    }
    if (skip && group_cannot_win(m, gG[g], s, best)) {
      gS[g] = -1.0f;
      continue;
    }
    const float* src = buf + g * kGroup;
    const __m256 vm = _mm256_set1_ps(m);
    __m256 e[4], a = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      __m256 w = _mm256_loadu_ps(src + 8 * k);
      if constexpr (kMulC) w = _mm256_mul_ps(w, vc);
      __m256 d = _mm256_sub_ps(w, vm);
      if constexpr (kMulS) d = _mm256_mul_ps(d, vis);
      e[k] = exp8(d);
      if (want_a) a = _mm256_add_ps(a, _mm256_mul_ps(e[k], _mm256_max_ps(d, lo)));  // d as exp8 clamps it
    }
    // group_sum32: a[k] + a[k + 16] (vectors 0 + 2, 1 + 3), + a[k + 8], then
    // the lanes + a[k + 4], + a[k + 2], + a[k + 1]; the A sum rides along in
    // the upper half.
    const __m256 t = _mm256_add_ps(_mm256_add_ps(e[0], e[2]), _mm256_add_ps(e[1], e[3]));
    __m256 x = _mm256_add_ps(_mm256_permute2f128_ps(t, a, 0x20), _mm256_permute2f128_ps(t, a, 0x31));
    x = _mm256_add_ps(x, _mm256_shuffle_ps(x, x, _MM_SHUFFLE(3, 2, 3, 2)));
    x = _mm256_add_ps(x, _mm256_shuffle_ps(x, x, _MM_SHUFFLE(1, 1, 1, 1)));
    gS[g] = _mm256_cvtss_f32(x);
    gA[g] = _mm_cvtss_f32(_mm256_extractf128_ps(x, 1));
  }
}

#endif

// Group keys of n groups: K = m + (log_f32(S) + G) s (noise.h group_key), -inf
// where S <= 0 (an empty or a skipped group).
inline void group_keys(const float* m, const float* S, const float* G, int64_t n, float s, float* K) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i + 16 <= n; i += 16) {  // the 8-lane steps below, 16 lanes at a time
    const __m512 vS = _mm512_loadu_ps(S + i);
    const __mmask16 live = _mm512_cmp_ps_mask(vS, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 lg = log16(_mm512_mask_mov_ps(_mm512_set1_ps(1.0f), live, vS));
    const __m512 k = _mm512_add_ps(_mm512_loadu_ps(m + i),
                                   _mm512_mul_ps(_mm512_add_ps(lg, _mm512_loadu_ps(G + i)), _mm512_set1_ps(s)));
    _mm512_storeu_ps(K + i, _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), live, k));
  }
#endif
  const __m256 vs = _mm256_set1_ps(s), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 vS = _mm256_loadu_ps(S + i);
    const __m256 live = _mm256_cmp_ps(vS, zero, _CMP_GT_OQ);
    const __m256 lg = log8(_mm256_blendv_ps(one, vS, live));
    const __m256 k =
        _mm256_add_ps(_mm256_loadu_ps(m + i), _mm256_mul_ps(_mm256_add_ps(lg, _mm256_loadu_ps(G + i)), vs));
    _mm256_storeu_ps(K + i, _mm256_blendv_ps(_mm256_set1_ps(kNegInf), k, live));
  }
  for (; i < n; ++i) K[i] = S[i] > 0.0f ? group_key(m[i], S[i], G[i], s) : kNegInf;
}

// Whether one of b[0 .. n) holds, n a multiple of 8.
inline bool any_of(const bool* b, int64_t n) {
  uint64_t r = 0;
  for (int64_t i = 0; i < n; i += 8) {
    uint64_t w;
    std::memcpy(&w, b + i, sizeof(w));
    r |= w;
  }
  return r != 0;
}

// need[g] = the group is live and its key, with gumbel_bound, could still beat
// best (not group_cannot_win); whether any does. Lane for lane the scalar steps.
inline bool candidates(const float* gm, const float* u, int64_t n, float s, float best, bool* need) {
  int64_t i = 0;
  bool any = false;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i + 16 <= n; i += 16) {
    const __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_loadu_ps(u + i));
    const __m512 gb = _mm512_add_ps(
        _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(127.0f),
                                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(t)), _mm512_set1_ps(0x1p-23f))),
                      _mm512_set1_ps(0.6931472f)),
        _mm512_set1_ps(0.01f));
    const __m512 m = _mm512_loadu_ps(gm + i);
    const __m512 bound =
        _mm512_add_ps(m, _mm512_mul_ps(_mm512_add_ps(_mm512_set1_ps(kLogGroupMass), gb), _mm512_set1_ps(s)));
    const __mmask16 live = _mm512_cmp_ps_mask(m, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
    const __mmask16 k = _mm512_mask_cmp_ps_mask(live, bound, _mm512_set1_ps(best), _CMP_NLT_UQ);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(need + i), _mm_maskz_mov_epi8(k, _mm_set1_epi8(1)));
    any |= k != 0;
  }
#endif
  for (; i < n; ++i) {
    need[i] = gm[i] > kNegInf && !group_cannot_win(gm[i], gumbel_bound(u[i]), s, best);
    any |= need[i];
  }
  return any;
}

// Gumbels of the uniforms u[0 .. n) (noise_group's last steps, lane for lane)
// for every vector of groups where need holds for one of them, -inf for the
// other vectors.
inline void gumbels(const float* u, const bool* need, int64_t n, float* G) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i + 16 <= n; i += 16) {
    const __m512 neg = _mm512_set1_ps(-0.0f);
    _mm512_storeu_ps(G + i, any_of(need + i, 16)
                                ? _mm512_xor_ps(log16(_mm512_xor_ps(log16(_mm512_loadu_ps(u + i)), neg)), neg)
                                : _mm512_set1_ps(kNegInf));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    const __m256 neg = _mm256_set1_ps(-0.0f);
    _mm256_storeu_ps(G + i, any_of(need + i, 8)
                                ? _mm256_xor_ps(log8(_mm256_xor_ps(log8(_mm256_loadu_ps(u + i)), neg)), neg)
                                : _mm256_set1_ps(kNegInf));
  }
  for (; i < n; ++i) G[i] = need[i] ? -log_f32(-log_f32(u[i])) : kNegInf;
}
#else
template <bool kGumbel = true>
inline void noise_group(const NoiseKey& key, uint32_t row, uint32_t group, float* gumbel) {
  for (uint32_t b = 0; b < kNoiseBlocksPerGroup; ++b) {
    const Philox4x32 w = noise_block(key, row, group * kNoiseBlocksPerGroup + b);
    for (int j = 0; j < 4; ++j) gumbel[8 * j + b] = kGumbel ? gumbel_from_bits(w.v[j]) : uniform_from_bits(w.v[j]);
  }
}

// Gumbels of the uniforms u[0 .. n) (gumbel_from_bits' last steps) where
// need[i] holds, -inf elsewhere (the vector builds: whole vectors of groups).
inline void gumbels(const float* u, const bool* need, int64_t n, float* G) {
  for (int64_t i = 0; i < n; ++i) G[i] = need[i] ? -log_f32(-log_f32(u[i])) : kNegInf;
}

inline bool candidates(const float* gm, const float* u, int64_t n, float s, float best, bool* need) {
  bool any = false;
  for (int64_t i = 0; i < n; ++i) {
    need[i] = gm[i] > kNegInf && !group_cannot_win(gm[i], gumbel_bound(u[i]), s, best);
    any |= need[i];
  }
  return any;
}

// Portable versions: noise.h's scalar functions (contracts as the AVX2 ones).
inline bool group_maxima(const float* buf, int64_t ng, float* gx) {
  bool nan = false;
  for (int64_t g = 0; g < ng; ++g) {
    const float* src = buf + g * kGroup;
    float m = kNegInf;
    for (int64_t k = 0; k < kNoiseGroup; ++k) {
      nan |= std::isnan(src[k]);
      m = src[k] > m ? src[k] : m;
    }
    gx[g] = m;
  }
  return nan;
}

template <bool kMulC, bool kMulS>
inline void group_pass_t(const float* buf, int64_t ng, const Params& p, bool want_a, float best, const float* gG,
                         const float* gm, float* gS, float* gA, Prefetch& pf) {
  const float s = p.key_scales.s;
  const bool skip = best > kNegInf;
  for (int64_t g = 0; g < ng; ++g) {
    pf.next();
    const float* src = buf + g * kGroup;
    const float m = gm[g];
    if (m == kNegInf) {
      gS[g] = 0.0f;
      gA[g] = 0.0f;
      continue;
    }
    if (skip && group_cannot_win(m, gG[g], s, best)) {
      gS[g] = -1.0f;
      continue;
    }
    float e[kNoiseGroup], a = 0.0f;
    for (int64_t k = 0; k < kNoiseGroup; ++k) {
      const float d = (src[k] * p.key_scales.c - m) * p.inv_s;
      e[k] = exp_f32(d);
      a += e[k] * std::max(d, kExpFlush);
    }
    gS[g] = group_sum32(e);
    if (want_a) gA[g] = a;
  }
}

inline void group_keys(const float* m, const float* S, const float* G, int64_t n, float s, float* K) {
  for (int64_t i = 0; i < n; ++i) K[i] = S[i] > 0.0f ? group_key(m[i], S[i], G[i], s) : kNegInf;
}
#endif

// group_pass_t with the multiplies by 1 left out.
inline void group_pass(const float* buf, int64_t ng, const Params& p, bool want_a, float best, const float* gG,
                       const float* gm, float* gS, float* gA, Prefetch& pf) {
  const bool mul_c = p.key_scales.c != 1.0f, mul_s = p.inv_s != 1.0f;
  if (mul_c && mul_s) {
    group_pass_t<true, true>(buf, ng, p, want_a, best, gG, gm, gS, gA, pf);
  } else if (mul_c) {
    group_pass_t<true, false>(buf, ng, p, want_a, best, gG, gm, gS, gA, pf);
  } else if (mul_s) {
    group_pass_t<false, true>(buf, ng, p, want_a, best, gG, gm, gS, gA, pf);
  } else {
    group_pass_t<false, false>(buf, ng, p, want_a, best, gG, gm, gS, gA, pf);
  }
}

// Gumbels of groups [g0, g0 + n) of `row` (the group stream of noise.h): 32
// groups per vectorised draw, groups laid out like columns.
template <bool kGumbel>
inline void group_noise(const NoiseKey& key, uint32_t row, int64_t g0, int64_t n, float* out) {
#if defined(CPU_CAPABILITY_AVX512)
  if (g0 % kNoiseGroup == 0 && n == kGumbelBatch) {
    noise_group8<kGumbel>(key, row, static_cast<uint32_t>(kGroupStream / kNoiseBlocksPerGroup + g0 / kNoiseGroup), out);
    return;
  }
#endif
  alignas(64) float tmp[2 * kNoiseGroup];
  const int64_t end = g0 + n;
  for (int64_t q = g0 / kNoiseGroup; q * kNoiseGroup < end;) {
    const uint32_t group = static_cast<uint32_t>(kGroupStream / kNoiseBlocksPerGroup + q);
    int64_t span = 1;  // noise groups drawn in this step
#if defined(CPU_CAPABILITY_AVX512)
    if ((q + 1) * kNoiseGroup < end) {
      noise_group2<kGumbel>(key, row, group, tmp);
      span = 2;
    } else {
      noise_group<kGumbel>(key, row, group, tmp);
    }
#else
    noise_group<kGumbel>(key, row, group, tmp);
#endif
    const int64_t lo = std::max(g0, q * kNoiseGroup), hi = std::min(end, (q + span) * kNoiseGroup);
    for (int64_t k = lo; k < hi; ++k) out[k - g0] = tmp[k - q * kNoiseGroup];
    q += span;
  }
}

// Steps (1) and (2) of a chunk: Tops holds the per-lane top-2 and first argmax
// of the scores z (x, or x / T with tempered scores) and whether a NaN was seen;
// top_pass updates it over a chunk (its first column col0), tops_max is the
// largest score so far, exp_sums adds sum exp(z - m) and sum exp(z - m)(z - m)
// over a chunk, and tops_finish merges the lanes at the end of the row: the
// winner is the lowest column among lanes holding the maximum m, the second
// score the largest of the rest (with multiplicity). Without kCols the columns
// are not tracked (sampling: the token is not the argmax) and the winner lane is
// any lane holding m, which gives the same second score.
#if defined(CPU_CAPABILITY_AVX512)
// 16 lanes of hand intrinsics: plain max / min instead of at::vec's
// NaN-propagating ones (a NaN is tracked by its own mask, the row is then
// invalid, and max_ps(z, t) returns t for a NaN z, so the maxima stay numbers),
// and two lane sets (even and odd vectors) so that the top1 chains overlap.
struct Tops {
  __m512 top1[2], top2[2], col[2];
  __mmask16 nan = 0;
  Tops() {
    for (int k = 0; k < 2; ++k) {
      top1[k] = top2[k] = _mm512_set1_ps(kNegInf);
      col[k] = _mm512_setzero_ps();
    }
  }
};

template <bool kScale, bool kCols>
inline void top_pass(const float* src, int64_t padded, int64_t col0, float inv_t, Tops& t) {
  const __m512 vinv = _mm512_set1_ps(inv_t), step = _mm512_set1_ps(32.0f), sixteen = _mm512_set1_ps(16.0f);
  __m512 col = _mm512_add_ps(_mm512_set1_ps(static_cast<float>(col0)),
                             _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512 top1a = t.top1[0], top1b = t.top1[1], top2a = t.top2[0], top2b = t.top2[1];
  __m512 cola = t.col[0], colb = t.col[1];
  __mmask16 nan = t.nan;
  for (int64_t i = 0; i < padded; i += 32, col = _mm512_add_ps(col, step)) {  // padded: whole groups
    __m512 za = _mm512_loadu_ps(src + i), zb = _mm512_loadu_ps(src + i + 16);
    if constexpr (kScale) {
      za = _mm512_mul_ps(za, vinv);
      zb = _mm512_mul_ps(zb, vinv);
    }
    nan |= _mm512_cmp_ps_mask(za, zb, _CMP_UNORD_Q);  // either one a NaN
    if constexpr (kCols) {
      const __mmask16 ga = _mm512_cmp_ps_mask(za, top1a, _CMP_GT_OQ);
      const __mmask16 gb = _mm512_cmp_ps_mask(zb, top1b, _CMP_GT_OQ);
      cola = _mm512_mask_mov_ps(cola, ga, col);
      colb = _mm512_mask_mov_ps(colb, gb, _mm512_add_ps(col, sixteen));
    }
    top2a = _mm512_max_ps(top2a, _mm512_min_ps(top1a, za));
    top2b = _mm512_max_ps(top2b, _mm512_min_ps(top1b, zb));
    top1a = _mm512_max_ps(za, top1a);
    top1b = _mm512_max_ps(zb, top1b);
  }
  t.top1[0] = top1a, t.top1[1] = top1b, t.top2[0] = top2a, t.top2[1] = top2b;
  t.col[0] = cola, t.col[1] = colb;
  t.nan = nan;
}

inline float tops_max(const Tops& t) {
  return _mm512_reduce_max_ps(_mm512_max_ps(t.top1[0], t.top1[1]));
}

inline double hsum16(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  double r = 0.0;
  for (int l = 0; l < 16; ++l) r += a[l];
  return r;
}

// e^d for the sums, d <= 0: exp16_clamped's steps on d not clamped at -86 (its
// vscalefps underflows gradually to 0 there), so a -inf entry (d clamped to
// kSumFloor: n = -159 and 2^n p = 0) adds exactly 0 to S and A.
constexpr float kSumFloor = -110.0f;
inline __m512 exp16_sum(__m512 d) {
  const __m512 t = _mm512_fmadd_ps(d, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kExpRound));
  const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(kExpRound));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpC1), d);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpC2), r);
  __m512 q = _mm512_set1_ps(kExpQ5);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ4));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ3));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ2));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kExpQ1));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(_mm512_fmadd_ps(r, q, _mm512_set1_ps(1.0f)), n);
}

// Two accumulator pairs so that the add chains overlap.
template <bool kScale, bool kPrefetch = false>
inline void exp_sums(const float* src, int64_t padded, float inv_t, float m, double& S, double& A,
                     Prefetch* pf = nullptr) {
  const __m512 vinv = _mm512_set1_ps(inv_t), vm = _mm512_set1_ps(m), lo = _mm512_set1_ps(kSumFloor);
  __m512 sa = _mm512_setzero_ps(), sb = sa, aa = sa, ab = sa;
  for (int64_t i = 0; i < padded; i += 32) {
    if constexpr (kPrefetch) pf->next();
    __m512 za = _mm512_loadu_ps(src + i), zb = _mm512_loadu_ps(src + i + 16);
    if constexpr (kScale) {
      za = _mm512_mul_ps(za, vinv);
      zb = _mm512_mul_ps(zb, vinv);
    }
    const __m512 da = _mm512_max_ps(_mm512_sub_ps(za, vm), lo), db = _mm512_max_ps(_mm512_sub_ps(zb, vm), lo);
    const __m512 ea = exp16_sum(da), eb = exp16_sum(db);
    sa = _mm512_add_ps(sa, ea);
    sb = _mm512_add_ps(sb, eb);
    aa = _mm512_fmadd_ps(ea, da, aa);
    ab = _mm512_fmadd_ps(eb, db, ab);
  }
  S += hsum16(_mm512_add_ps(sa, sb));
  A += hsum16(_mm512_add_ps(aa, ab));
}

inline void tops_finish(const Tops& t, float m, bool& has_nan, float& second, int64_t& col) {
  has_nan = t.nan != 0;
  alignas(64) float t1[32], t2[32], t1c[32];
  for (int k = 0; k < 2; ++k) {
    _mm512_store_ps(t1 + 16 * k, t.top1[k]);
    _mm512_store_ps(t2 + 16 * k, t.top2[k]);
    _mm512_store_ps(t1c + 16 * k, t.col[k]);
  }
  int win = -1;
  for (int l = 0; l < 32; ++l) {
    if (t1[l] == m && (win < 0 || t1c[l] < t1c[win])) win = l;
  }
  second = kNegInf;
  for (int l = 0; l < 32; ++l) {
    second = std::max(second, t2[l]);
    if (l != win) second = std::max(second, t1[l]);
  }
  col = win < 0 ? -1 : static_cast<int64_t>(t1c[win]);
}
#else
struct Tops {
  Vec top1{kNegInf}, top2{kNegInf}, col{0.f}, nan{0.f};
};

template <bool kScale, bool kCols>
inline void top_pass(const float* src, int64_t padded, int64_t col0, float inv_t, Tops& t) {
  // Strict > keeps the lowest column of a lane's maximum.
  const Vec vinv(inv_t);
  Vec col = Vec(static_cast<float>(col0)) + Vec::arange(0.f, 1.f);
  for (int64_t i = 0; i < padded; i += kLanes, col = col + Vec(static_cast<float>(kLanes))) {
    const Vec z = kScale ? Vec::loadu(src + i) * vinv : Vec::loadu(src + i);
    t.nan = t.nan | z.isnan();
    const Vec greater = z > t.top1;
    t.top2 = at::vec::maximum(t.top2, at::vec::minimum(t.top1, z));
    t.col = Vec::blendv(t.col, col, greater);
    t.top1 = Vec::blendv(t.top1, z, greater);
  }
}

inline float tops_max(const Tops& t) { return hmax(t.top1); }

template <bool kScale, bool kPrefetch = false>
inline void exp_sums(const float* src, int64_t padded, float inv_t, float m, double& S, double& A,
                     Prefetch* pf = nullptr) {
  const Vec vinv(inv_t), vm(m), floor_(kExpFloor);
  Vec s_acc(0.f), a_acc(0.f);
  for (int64_t i = 0; i < padded; i += kLanes) {
    if constexpr (kPrefetch) {
      if (i % kGroup == 0) pf->next();
    }
    const Vec z = kScale ? Vec::loadu(src + i) * vinv : Vec::loadu(src + i);
    const Vec d = at::vec::maximum(z - vm, floor_);
    const Vec e = d.exp_u20();
    s_acc = s_acc + e;
    a_acc = a_acc + e * d;
  }
  S += hsum(s_acc);
  A += hsum(a_acc);
}

inline void tops_finish(const Tops& t, float m, bool& has_nan, float& second, int64_t& col) {
  has_nan = t.nan.zero_mask() != (1 << kLanes) - 1;
  std::array<float, kLanes> t1, t2, t1c;
  t.top1.store(t1.data());
  t.top2.store(t2.data());
  t.col.store(t1c.data());
  int64_t win = -1;
  for (int64_t l = 0; l < kLanes; ++l) {
    if (t1[l] == m && (win < 0 || t1c[l] < t1c[win])) win = l;
  }
  second = kNegInf;
  for (int64_t l = 0; l < kLanes; ++l) {
    second = std::max(second, t2[l]);
    if (l != win) second = std::max(second, t1[l]);
  }
  col = win < 0 ? -1 : static_cast<int64_t>(t1c[win]);
}
#endif

// Chunk [c0, c0 + n) of the padded row as floats: float32 chunks of whole
// groups are read in place, the others copied to buf (converted, padded).
// Returns the chunk and sets its padded length.
template <typename T>
inline const float* row_chunk(const T* x, const Row& row, int64_t c0, int64_t n, float* buf, int64_t& padded) {
  if constexpr (std::is_same_v<T, float>) {
    if (c0 >= row.lead && n % kGroup == 0) {
      padded = n;
      return x + (c0 - row.lead);
    }
  }
  padded = load_chunk(x, row.lead, c0, n, buf);
  return buf;
}

// The running sums against a maximum that grows from m to m_new (see the top).
inline void rescale_sums(float m, float m_new, double& S, double& A) {
  if (m_new > m && S > 0.0) {
    const double shift = static_cast<double>(m) - m_new;
    const double r = std::exp(shift);
    A = r * (A + shift * S);
    S = r * S;
  }
}

// The row at T = 0: steps (1) and (2), the token the first argmax.
template <typename T>
RowReduction reduce_row_argmax(const T* x, const Row& row, float* buf) {
  const int64_t V = row.V + row.lead;  // the padded row
  // Per-lane running state. Columns are carried as floats (exact below 2^24).
  Tops tops;
  float m = kNegInf;  // running maximum of the scores
  double S = 0.0, A = 0.0;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    int64_t padded;
    const float* src = row_chunk(x, row, c0, std::min(kChunk, V - c0), buf, padded);
    // (1) per-lane top-2 and first argmax.
    top_pass<false, true>(src, padded, c0, 1.0f, tops);
    // (2) exp sums against the new running maximum.
    const float m_new = std::max(m, tops_max(tops));
    if (!std::isfinite(m_new)) {
      m = m_new;  // all -inf so far (nothing to add), or +inf / NaN (row invalid)
      if (!(m_new == kNegInf)) break;
      continue;
    }
    rescale_sums(m, m_new, S, A);
    m = m_new;
    exp_sums<false>(src, padded, 1.0f, m, S, A);
  }

  RowReduction out;
  bool has_nan;
  int64_t col;  // in the padded row
  tops_finish(tops, m, has_nan, out.second, col);
  out.invalid = has_nan || m == std::numeric_limits<float>::infinity() || std::isnan(m);
  if (out.invalid) return out;
  out.m = m;
  out.S = S;
  out.A = A;
  out.key = m;
  if (m == kNegInf || col < 0) {  // an all -inf slice
    out.key = kNegInf;
    out.token = -1;
    out.token_score = kNegInf;
    return out;
  }
  out.token = row.col_base + col;
  out.token_score = m;
  return out;
}

// The largest of v[0 .. n) (no NaN among them).
inline float max_of(const float* v, int64_t n) {
  Vec acc(kNegInf);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = at::vec::maximum(acc, Vec::loadu(v + i));
  float r = hmax(acc);
  for (; i < n; ++i) r = std::max(r, v[i]);
  return r;
}

// The row at T > 0: per chunk the group maxima, step (2) with two
// distributions, and step (3); the token from the winning group's element noise.
template <typename T>
RowReduction reduce_row_sample(const T* x, const Row& row, const Params& p, float* buf) {
  const int64_t V = row.V + row.lead;  // the padded row
  const bool scale_scores = p.tempered_scores;
  float m = kNegInf;  // running maximum of the scores
  double S = 0.0, A = 0.0;
  bool has_nan = false;
  // The row's largest group maximum of x so far, its first group (of the padded
  // row) and the largest maximum of the other groups (with multiplicity: a tie
  // puts the maximum here too). The scores' maximum and second value come from
  // these, so sampling needs no per-element top-2 sweep.
  float top1 = kNegInf, top2 = kNegInf;
  int64_t top_group = -1;
  // Best group key so far and its group (of the padded row).
  float best_key = kNegInf;
  int64_t best_group = -1;
  // Per-chunk group results (padded to whole vectors with empty groups): maxima
  // of x and of w = x * c, sums, Gumbels, keys.
  alignas(64) float gx[kChunkGroups], gm[kChunkGroups], gS[kChunkGroups], gA[kChunkGroups], gK[kChunkGroups];
  // Group uniforms (the group stream of noise.h) of kGumbelBatch groups of the
  // padded row from batch_start, and the chunk's Gumbels drawn from them.
  alignas(64) float batch[kGumbelBatch], gG[kChunkGroups];
  bool need[kChunkGroups];
  int64_t batch_start = -kGumbelBatch;
  const int64_t row_groups = (V + kGroup - 1) / kGroup;

  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    // src holds the raw logits: the scores scale them on the fly, the sampler by
    // c (noise.h), which x / T would not survive when it overflows.
    int64_t padded;
    const float* src = row_chunk(x, row, c0, std::min(kChunk, V - c0), buf, padded);
    const int64_t ng = padded / kGroup;

    // (1) the group maxima of x, which the group pass needs anyway. The chunk's
    // largest score is theirs scaled: x -> x * (1 / T) is monotonic, and so is
    // its rounding, so the maximum of the scaled values is the scaled maximum.
    if (group_maxima(src, ng, gx)) {
      has_nan = true;  // the row is invalid: nothing else matters
      break;
    }
    const float cm = max_of(gx, ng);
    if (cm > top1) {
      float rest = kNegInf;  // the chunk's other groups
      int64_t first = -1;
      for (int64_t g = 0; g < ng; ++g) {
        if (first < 0 && gx[g] == cm) {
          first = g;
        } else {
          rest = std::max(rest, gx[g]);
        }
      }
      top2 = std::max(top1, rest);
      top1 = cm;
      top_group = c0 / kGroup + first;
    } else {
      top2 = std::max(top2, cm);
    }

    // (2) with two distributions, exp sums against the new running maximum
    // (the scores are x itself then: tempered scores share the group exps).
    const float m_new = std::max(m, scale_scores ? cm * p.inv_temperature : cm);
    if (!std::isfinite(m_new)) {
      m = m_new;  // all -inf so far (nothing to add), or +inf (row invalid)
      if (!(m_new == kNegInf)) break;
      continue;
    }
    rescale_sums(m, m_new, S, A);
    m = m_new;
    // The next chunk's logits, fetched during this chunk's exps.
    Prefetch pf;
    if (std::is_same_v<T, float> && c0 + kChunk < V) {
      const int64_t lo = std::max<int64_t>(c0 + kChunk - row.lead, 0), hi = std::min(c0 + 2 * kChunk, V) - row.lead;
      pf.p = reinterpret_cast<const char*>(x + lo);
      pf.end = reinterpret_cast<const char*>(x + hi);
      pf.step = ((pf.end - pf.p + ng - 1) / ng + 63) / 64 * 64;  // bytes per group of this chunk
    }
    if (!p.shared) exp_sums<false, true>(src, padded, 1.0f, m, S, A, &pf);

    // (3) the group pass (noise.h, hierarchical Gumbel-max), on m_g = max w =
    // c max x (c > 0: the same monotonicity). The group Gumbels come first: with
    // two distributions the sums are done, and the pass skips the groups whose
    // key cannot beat the best one of the earlier chunks (group_cannot_win).
    const float* gmw = gx;
    if (p.key_scales.c != 1.0f) {
      for (int64_t g = 0; g < ng; ++g) gm[g] = gx[g] * p.key_scales.c;
      gmw = gm;
    }
    const int64_t chunk_group = c0 / kGroup;
    if (chunk_group >= batch_start + kGumbelBatch) {
      batch_start = chunk_group;
      group_noise<false>(p.key, row.noise_row, row.col_base / kGroup + batch_start,
                         std::min(kGumbelBatch, row_groups - batch_start), batch);
    }
    // The Gumbels of the groups whose key could still beat the best one of the
    // earlier chunks (gumbel_bound; all live groups while there is none), -inf
    // for whole vectors of groups that cannot: their keys are then -inf, below
    // the best, and with two distributions the group pass skips them.
    const float* gu = batch + (chunk_group - batch_start);
    const bool any_need = candidates(gmw, gu, ng, p.key_scales.s, best_key, need);
    if (any_need) gumbels(gu, need, ng, gG);
    if (p.shared || any_need) group_pass(src, ng, p, p.shared, p.shared ? kNegInf : best_key, gG, gmw, gS, gA, pf);
    if (p.shared) {
      // The scores' sums from the group sums: z = w / s, so a group's terms are
      // exp(m_g / s - m) times its own (clamped as in (2): empty groups add 0).
      for (int64_t g = ng; g % kLanes; ++g) gx[g] = kNegInf, gm[g] = kNegInf, gS[g] = 0.f, gA[g] = 0.f;
      const Vec vm(m), floor_(kExpFloor), vis(p.inv_s);
      Vec s_acc(0.f), a_acc(0.f);
      for (int64_t g = 0; g < ng; g += kLanes) {
        const Vec d = at::vec::maximum(Vec::loadu(gmw + g) * vis - vm, floor_);
        const Vec r = d.exp_u20();
        const Vec sg = Vec::loadu(gS + g);
        s_acc = s_acc + r * sg;
        a_acc = a_acc + r * (Vec::loadu(gA + g) + d * sg);
      }
      S += hsum(s_acc);
      A += hsum(a_acc);
    }
    if (!any_need) continue;
    group_keys(gmw, gS, gG, ng, p.key_scales.s, gK);
    const float chunk_key = max_of(gK, ng);
    if (chunk_key > best_key) {  // strict: the lowest group wins ties
      int64_t g = 0;
      while (gK[g] != chunk_key) ++g;
      best_key = chunk_key;
      best_group = c0 / kGroup + g;
    }
  }

  RowReduction out;
  out.invalid = has_nan || m == std::numeric_limits<float>::infinity() || std::isnan(m);
  if (out.invalid) return out;
  out.m = m;
  out.S = S;
  out.A = A;
  // The second score: the largest group maximum besides top1's group, or a
  // second value inside that group (with multiplicity), scaled like m.
  float second = top2;
  if (top_group >= 0) {
    bool seen = false;
    for (int64_t k = 0; k < kGroup; ++k) {
      const int64_t u = top_group * kGroup + k;
      const float v = u < row.lead || u >= V ? kNegInf : static_cast<float>(x[u - row.lead]);
      if (!seen && v == top1) {
        seen = true;
      } else {
        second = std::max(second, v);
      }
    }
  }
  out.second = scale_scores ? second * p.inv_temperature : second;

  int64_t col = -1;  // in the padded row
  out.key = best_key;
  if (best_group >= 0) {
    // Element noise inside the winning group only: y = x * c + g * s, the
    // first maximum (padding columns are -inf and never win).
    alignas(64) float g[kNoiseGroup];
    noise_group(p.key, row.noise_row, static_cast<uint32_t>(row.col_base / kGroup + best_group), g);
    float best_y = kNegInf;
    for (int64_t k = 0; k < kNoiseGroup; ++k) {
      const int64_t u = best_group * kGroup + k;
      if (u < row.lead || u >= V) continue;
      const float y = static_cast<float>(x[u - row.lead]) * p.key_scales.c + g[k] * p.key_scales.s;
      if (y > best_y || col < 0) {
        best_y = y;
        col = u;
      }
    }
  }
  if (out.key == kNegInf || col < 0) {  // an all -inf slice
    out.key = kNegInf;
    out.token = -1;
    out.token_score = kNegInf;
    return out;
  }
  out.token = row.col_base + col;
  const float xt = static_cast<float>(x[col - row.lead]);
  out.token_score = scale_scores ? xt * p.inv_temperature : xt;
  return out;
}

template <typename T>
RowReduction reduce_row(const T* x, const Row& row, const Params& p, float* buf) {
  return p.sample ? reduce_row_sample(x, row, p, buf) : reduce_row_argmax(x, row, buf);
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
  p.inv_s = 1.0f / p.key_scales.s;
  // One distribution: the group exps of the sampler are the scores' exps.
  p.shared = p.sample && (tempered_scores || p.inv_temperature == 1.0f);
  p.key = make_noise_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  return p;
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
  read_cpu_rng("token_stats", rng, seed, offset);
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
  read_cpu_rng("token_stats_partial", rng, seed, offset);
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

TokenStatsParams token_stats_params(double temperature, bool tempered_scores, int64_t seed, int64_t offset) {
  return make_params(temperature, tempered_scores, seed, offset);
}

template <typename T>
TokenStatsRow token_stats_row(const T* x, int64_t V, uint32_t noise_row, const TokenStatsParams& p, float* scratch) {
  return finish_row(reduce_row(x, Row{V, 0, 0, noise_row}, p, scratch));
}

template TokenStatsRow token_stats_row<float>(const float*, int64_t, uint32_t, const TokenStatsParams&, float*);
template TokenStatsRow token_stats_row<at::Half>(const at::Half*, int64_t, uint32_t, const TokenStatsParams&,
                                                 float*);
template TokenStatsRow token_stats_row<at::BFloat16>(const at::BFloat16*, int64_t, uint32_t,
                                                     const TokenStatsParams&, float*);

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) {
  m.impl("token_stats", &token_stats_cpu);
  m.impl("token_stats_partial", &token_stats_partial_cpu);
}

}  // namespace dmkernels
