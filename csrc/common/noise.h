// Counter-based Gumbel noise shared by every backend.
//
// The noise for element (row, column) of a token_stats call is a pure function
// of (seed, offset, row, column), so the CPU, CUDA and Triton kernels and the
// PyTorch reference (dmkernels/reference/noise.py) draw the same sample.
// Columns come in groups of 32; one Philox call (4 words) serves 4 columns of a
// group that are 8 apart, so 8 calls side by side fill four SIMD vectors (or
// four coalesced loads of a warp) with consecutive columns:
//
//   block = (column / 32) * 8 + column % 8,   word = (column / 8) % 4
//   bits  = Philox4x32-10(counter = (block, row, offset_lo, offset_hi),
//                         key     = (seed_lo, seed_hi))[word]
//   u     = (bits >> 9) * 2^-23 + 2^-24          exact in float32, u in (0, 1)
//   g     = -log_f32(-log_f32(u))                  float32, log_f32 below
//   y     = x * c + g * s                          two roundings, never an FMA
//   token = argmax y, lowest column on ties
//
// with s = 2^-e, e >= 0 the least making c = float32(1 / temperature) * s <= 1
// (key_scales below; s = 1 for T >= 1). s is a power of two, so y is exactly
// (x * float32(1 / T) + g) * s, the same argmax, whenever that does not
// overflow; and |x * c| <= |x| never overflows, so finite logits far beyond
// FLT_MAX * T still sample right. Temperatures below 2^-100 are refused by
// every backend: that keeps s, and g * s for any g != 0 (|g| >= 2^-22), in
// float32's normal range, where no hardware flushes them.
//
// Every step is a fixed sequence of IEEE float32 multiplies and adds (no FMA
// contraction: -ffp-contract=off, nvcc --fmad=false, Triton without fp fusion)
// and integer bit operations, so every backend gets the same bits: the same
// seed gives the same token everywhere, not just almost always. That is why
// log_f32 is our own polynomial and not the platform's logf.
//
// Plain C++ with no torch include, so nvcc compiles it for device code too.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DMK_HOST_DEVICE __host__ __device__ __forceinline__
#define DMK_UNROLL _Pragma("unroll")
#else
#define DMK_HOST_DEVICE inline
#define DMK_UNROLL  // g++ unrolls these fixed-count loops at -O3 and warns on nvcc's pragma
#endif

namespace dmkernels {

// float32 multiply and add with one rounding each, whatever the compiler's
// contraction flags: device code spells it out, host code relies on
// -ffp-contract=off (setup.py). DMK_FMA, the fused multiply-add rounded once,
// is used by exp_f32 only.
#if defined(__CUDA_ARCH__)
#define DMK_MUL(a, b) __fmul_rn((a), (b))
#define DMK_ADD(a, b) __fadd_rn((a), (b))
#define DMK_FMA(a, b, c) __fmaf_rn((a), (b), (c))
#else
#define DMK_MUL(a, b) ((a) * (b))
#define DMK_ADD(a, b) ((a) + (b))
#define DMK_FMA(a, b, c) std::fma(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c))
#endif

// Random123's Philox4x32 constants.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Largest Gumbel value the mapping above can produce: u <= 1 - 2^-24 gives
// -log(-log(u)) <= 16.64. It bounds the group keys below (kGroupKeyBound), so
// kernels may skip groups that cannot win.
constexpr float kGumbelBound = 17.0f;

// Smallest temperature > 0 that token_stats accepts (see y above).
constexpr double kMinTemperature = 0x1p-100;

// (c, s) of the perturbed value y = x * c + g * s for inv_t = float32(1 / T).
struct KeyScales {
  float c, s;
};
DMK_HOST_DEVICE KeyScales key_scales(float inv_t) {
  float s = 1.0f;
  while (DMK_MUL(inv_t, s) > 1.0f) s = DMK_MUL(s, 0.5f);
  return KeyScales{DMK_MUL(inv_t, s), s};
}

struct Philox4x32 {
  uint32_t v[4];
};

DMK_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                         uint32_t c3, uint32_t k0, uint32_t k1) {
DMK_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// log_f32: natural log of a positive normal float32 (the noise needs no more).
// x = 2^e * m with m in (sqrt(1/2), sqrt(2)], f = m - 1 (exact), and
// log x = e * ln2 + f * Q(f) with Q a degree-8 polynomial fitted (weighted least
// squares, then rounded to float32) to log1p(f) / f on that interval: relative
// error below 2e-7. Evaluated by Horner, one rounding per multiply and add.
// Coefficient i of Q (a function, not an array: arrays at namespace scope are
// not visible in device code).
DMK_HOST_DEVICE constexpr float log_q(int i) {
  switch (i) {
    case 0: return 1.0f;
    case 1: return -0.49999988079071045f;
    case 2: return 0.3333418667316437f;
    case 3: return -0.25002074241638184f;
    case 4: return 0.19956833124160767f;
    case 5: return -0.16562391817569733f;
    case 6: return 0.14952263236045837f;
    case 7: return -0.143668532371521f;
    default: return 0.08722376823425293f;
  }
}
constexpr float kLn2 = 0.693147182464599609375f;  // float32(ln 2)
constexpr float kSqrt2 = 1.41421353816986083984375f;  // float32(sqrt 2)

DMK_HOST_DEVICE float log_f32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  const uint32_t mbits = (bits & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  float m;
  std::memcpy(&m, &mbits, sizeof(m));
  if (m > kSqrt2) {
    m = DMK_MUL(m, 0.5f);
    e += 1;
  }
  const float f = DMK_ADD(m, -1.0f);
  float q = log_q(8);
DMK_UNROLL
  for (int i = 7; i >= 0; --i) q = DMK_ADD(DMK_MUL(q, f), log_q(i));
  return DMK_ADD(DMK_MUL(static_cast<float>(e), kLn2), DMK_MUL(f, q));
}

// 23 random bits -> u in (0, 1); both steps are exact in float32.
DMK_HOST_DEVICE float uniform_from_bits(uint32_t bits) {
  return DMK_ADD(DMK_MUL(static_cast<float>(static_cast<int32_t>(bits >> 9)), 0x1p-23f), 0x1p-24f);
}

// Gumbel(0, 1) from 32 random bits.
DMK_HOST_DEVICE float gumbel_from_bits(uint32_t bits) {
  return -log_f32(-log_f32(uniform_from_bits(bits)));
}

// Columns per noise group and Philox blocks per group (see the layout above).
constexpr int64_t kNoiseGroup = 32;
constexpr int64_t kNoiseBlocksPerGroup = 8;

// ---------------------------------------------------------------------------
// Hierarchical Gumbel-max: what token_stats samples at T > 0.
//
// Drawing Gumbel noise (a Philox call and two logs) for every column makes
// sampling several times dearer than the argmax. Instead the row is split into
// the noise groups above (32 global columns; a slice or row end mid-group is
// padded with -inf) and the sample is drawn in two stages:
//
//   w_j  = x_j * c                                 key-scaled logits (key_scales)
//   m_g  = max_{j in g} w_j                        exact
//   e_j  = exp_f32((w_j - m_g) * (1 / s))           1 / s: a power of two, exact
//   S_g  = group_sum32(e_g)                        the fixed tree below; S_g in [1, 32]
//   G_g  = -log_f32(-log_f32(u))  from group_noise_bits(key, row, g)
//   K_g  = m_g + (log_f32(S_g) + G_g) * s          the group key (-inf for an all -inf group)
//   g*   = argmax_g K_g, lowest group on ties
//   token = argmax_{j in g*} y_j, y_j = w_j + g_j * s as above, lowest column on ties
//
// Why it is exact: w_j / s = x_j / T (s a power of two), so the probability
// mass of group g under softmax(x / T) is proportional to exp(m_g / s) S_g,
// whose log scaled by s is K_g - G_g * s. Gumbel-max over the groups picks g
// with probability mass_g / sum of masses; Gumbel-max over the columns of g
// with independent noise then picks j with probability exp(x_j / T) / mass_g,
// so P(j) = softmax(x / T)_j (up to the float32 rounding of e_j and S_g,
// relative error about 1e-7; exp_f32 clamps at e^-86, so a column more than
// 86 below its group's maximum weighs e^-86 instead of less, again far below
// float32's resolution of S_g >= 1). The element noise is drawn for one group per row,
// the group noise is one word per 32 columns, and the e_j are the exps the
// entropy and probability sums need anyway when the scores describe the
// sampled distribution (T = 1 or tempered scores): sampling costs about what
// the argmax costs.
//
// Bit identity needs every quantity that picks a winner computed canonically:
// exp_f32 below is our own (range reduction by powers of two, a fixed Horner
// polynomial evaluated with fused multiply-adds, clamped at e^-86), and
// S_g is summed in one fixed order (group_sum32). The group noise is a second
// Philox stream: counter word 0 has its top bit set (kGroupStream), which an
// element block, (column / 32) * 8 + column % 8 < 2^22 for columns < 2^24,
// never has; groups are laid out like columns (group k: block
// kGroupStream | ((k / 32) * 8 + k % 8), word (k / 8) % 4), so one Philox call
// serves four groups and eight calls side by side serve 32.
//
// A vocabulary slice (token_stats_partial) can only reproduce K_g of whole
// groups, so at T > 0 slices must start on a group edge (vocab_start % 32 == 0).
constexpr uint32_t kGroupStream = 0x80000000u;

// exp_f32(d) for d <= 0: d is first clamped to kExpFlush = -86 (NaN stays NaN),
// so 2^n >= 2^-124 below and every result, e^-86 ~ 4.5e-38 at least, is a
// normal float that no backend's flush-to-zero can change (an -inf entry
// weighs 4.5e-38, nothing next to the group maximum's 1). Then e^d = 2^n e^r
// with n = d log2(e) rounded to the nearest integer (ties to even) by adding
// and subtracting kExpRound = 1.5 * 2^23, r = d - n * ln2 with ln2 in two
// parts (kExpC1 has 9 bits, so n * kExpC1 is exact), |r| <= ~ln2 / 2, and
// e^r = 1 + r Q(r), Q a degree-5 polynomial fitted (weighted least squares,
// reweighted towards minimax, rounded to float32) to (e^r - 1) / r: relative
// error below one ulp. 2^n comes from the bits of d log2(e) + kExpRound,
// which are 0x4B400000 + n. exp_f32(0) == 1.
//
// Unlike the noise above, exp_f32 runs once per element on the sampling path,
// so it uses fused multiply-adds (DMK_FMA: one rounding, the IEEE fma), which
// every backend has exactly: FMA3 on the AVX2 path, fmaf elsewhere on the
// host, __fmaf_rn on CUDA, tl.fma in Triton (its interpreter rounds once too),
// and an exact emulation in float64 in the PyTorch reference. Every other
// multiply and add stays unfused.
constexpr float kLog2e = 1.4426950216293335f;  // float32(log2 e)
constexpr float kExpRound = 12582912.0f;       // 1.5 * 2^23
constexpr float kExpC1 = 0.693359375f;         // 355 / 512
constexpr float kExpC2 = -0.00021219444170128554f;  // float32(ln 2 - kExpC1)
constexpr float kExpFlush = -86.0f;
constexpr float kExpQ1 = 0.4999999403953552f;
constexpr float kExpQ2 = 0.16666431725025177f;
constexpr float kExpQ3 = 0.04166799411177635f;
constexpr float kExpQ4 = 0.008374135009944439f;
constexpr float kExpQ5 = 0.0013843962224200368f;

DMK_HOST_DEVICE float exp_f32(float d) {
  d = d < kExpFlush ? kExpFlush : d;  // NaN compares false: stays NaN
  const float t = DMK_FMA(d, kLog2e, kExpRound);
  const float n = DMK_ADD(t, -kExpRound);
  float r = DMK_FMA(-n, kExpC1, d);
  r = DMK_FMA(-n, kExpC2, r);
  float q = kExpQ5;
  q = DMK_FMA(q, r, kExpQ4);
  q = DMK_FMA(q, r, kExpQ3);
  q = DMK_FMA(q, r, kExpQ2);
  q = DMK_FMA(q, r, kExpQ1);
  q = DMK_FMA(q, r, 1.0f);
  const float p = DMK_FMA(r, q, 1.0f);
  uint32_t tbits;
  std::memcpy(&tbits, &t, sizeof(tbits));
  const uint32_t sbits = (tbits + (127u - 0x4B400000u)) << 23;  // 2^n (any bits for NaN: p is NaN)
  float scale;
  std::memcpy(&scale, &sbits, sizeof(scale));
  return DMK_MUL(p, scale);
}

// The canonical sum of a group's 32 values: halving folds, a[k] += a[k + h] for
// h = 16, 8, 4, 2, 1 (each a lane-wise add of two halves: the natural order of
// SIMD lanes, of a thread's registers, and of a Triton [.., 2, h] reshape summed
// over the axis of 2). Overwrites a.
DMK_HOST_DEVICE float group_sum32(float* a) {
DMK_UNROLL
  for (int h = 16; h >= 1; h >>= 1) {
DMK_UNROLL
    for (int k = 0; k < h; ++k) a[k] = DMK_ADD(a[k], a[k + h]);
  }
  return a[0];
}

// Group key K_g (above) from the group's max m (w domain), sum S and Gumbel G.
DMK_HOST_DEVICE float group_key(float m, float S, float G, float s) {
  if (m == -INFINITY) return -INFINITY;
  return DMK_ADD(m, DMK_MUL(DMK_ADD(log_f32(S), G), s));
}

// Largest K_g - m_g can be: log 32 + kGumbelBound, times s; a group whose
// m_g + kGroupKeyBound * s cannot beat the best key so far cannot win.
constexpr float kGroupKeyBound = 21.0f;

struct NoiseKey {
  uint32_t seed_lo, seed_hi, offset_lo, offset_hi;
};

DMK_HOST_DEVICE NoiseKey make_noise_key(uint64_t seed, uint64_t offset) {
  return NoiseKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                  static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)};
}

// The four words of `block`: columns (block / 8) * 32 + block % 8 + 8 * word of `row`.
DMK_HOST_DEVICE Philox4x32 noise_block(const NoiseKey& key, uint32_t row, uint32_t block) {
  return philox4x32_10(block, row, key.offset_lo, key.offset_hi, key.seed_lo, key.seed_hi);
}

// Raw bits of one column (for scalar code paths; kernels use noise_block).
DMK_HOST_DEVICE uint32_t noise_bits(const NoiseKey& key, uint32_t row, uint64_t column) {
  const uint32_t block = static_cast<uint32_t>((column / 32) * 8 + column % 8);
  return noise_block(key, row, block).v[(column / 8) % 4];
}

// Raw bits of the Gumbel of noise group `group` of `row` (the second stream above).
DMK_HOST_DEVICE uint32_t group_noise_bits(const NoiseKey& key, uint32_t row, uint64_t group) {
  const uint32_t block = kGroupStream | static_cast<uint32_t>((group / 32) * 8 + group % 8);
  return noise_block(key, row, block).v[(group / 8) % 4];
}

// ---------------------------------------------------------------------------
// Re-noising (renoise_): uniform random tokens in [0, V) for a [B, L] canvas.
//
// Position (b, l) has the flat index f = b * L + l and takes 64 random bits
// from a third Philox stream, two positions per call:
//
//   pair  = f / 2
//   words = Philox4x32-10(counter = (kRenoiseStream | (pair & kRenoisePairMask), pair >> 30,
//                                    offset_lo, offset_hi),
//                         key     = (seed_lo, seed_hi))
//   bits  = words[2 * (f % 2)] | words[2 * (f % 2) + 1] << 32
//   token = (bits * V) >> 64                    the high 64 bits of the 128-bit product
//
// Counter word 0 has bit 30 set and bit 31 clear: an element block (< 2^22) has
// neither and a group block (kGroupStream) has bit 31, so no counter of this
// stream is one of token_stats' for any row, whatever word 1 holds; word 1
// carries the pair's bits above 30, so flat indices up to 2^63 are distinct.
// The multiply-high maps 2^64 equally likely values onto V tokens in runs of
// floor(2^64 / V) or one more, so each token's probability is within 1 / 2^64
// of 1 / V (relative error at most V / 2^64, below 2^-32 for V <= 2^32): no
// rejection loop, a fixed cost per token, the same integers on every backend.
// ---------------------------------------------------------------------------
constexpr uint32_t kRenoiseStream = 0x40000000u;
constexpr uint32_t kRenoisePairMask = 0x3FFFFFFFu;

// High 64 bits of a * b, from 32-bit halves (portable: no __int128 on the device).
DMK_HOST_DEVICE uint64_t mulhi_u64(uint64_t a, uint64_t b) {
  const uint64_t al = a & 0xFFFFFFFFu, ah = a >> 32, bl = b & 0xFFFFFFFFu, bh = b >> 32;
  const uint64_t t = al * bl;
  const uint64_t w1 = ah * bl + (t >> 32);           // < 2^64: no wrap
  const uint64_t w2 = al * bh + (w1 & 0xFFFFFFFFu);  // < 2^64: no wrap
  return ah * bh + (w1 >> 32) + (w2 >> 32);
}

// The four words of the Philox call serving flat positions 2 * pair and 2 * pair + 1.
DMK_HOST_DEVICE Philox4x32 renoise_block(const NoiseKey& key, uint64_t pair) {
  return philox4x32_10(kRenoiseStream | static_cast<uint32_t>(pair & kRenoisePairMask),
                       static_cast<uint32_t>(pair >> 30), key.offset_lo, key.offset_hi, key.seed_lo, key.seed_hi);
}

// Token of flat position f from its pair's block (f % 2 picks the two words).
DMK_HOST_DEVICE uint64_t renoise_token(const Philox4x32& w, uint64_t flat, uint64_t vocab) {
  const int k = static_cast<int>(flat & 1u) * 2;
  const uint64_t bits = static_cast<uint64_t>(w.v[k]) | (static_cast<uint64_t>(w.v[k + 1]) << 32);
  return mulhi_u64(bits, vocab);
}

// Scalar form: the random token of flat position f in [0, vocab).
DMK_HOST_DEVICE uint64_t uniform_token(const NoiseKey& key, uint64_t flat, uint64_t vocab) {
  return renoise_token(renoise_block(key, flat >> 1), flat, vocab);
}

}  // namespace dmkernels
