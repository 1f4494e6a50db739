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
//   g     = -log(-log(u))                          float32
//   y     = x * float32(1 / temperature) + g       two roundings, never an FMA
//   token = argmax y, lowest column on ties
//
// Everything up to u is exact integer / float arithmetic. The two logs are the
// only place backends can differ (by an ulp), which moves the argmax only when
// two perturbed logits are within an ulp of each other.
//
// Plain C++ with no torch include, so nvcc compiles it for device code too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DMK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DMK_HOST_DEVICE inline
#endif

namespace dmkernels {

// Random123's Philox4x32 constants.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Largest Gumbel value the mapping above can produce: u <= 1 - 2^-24 gives
// -log(-log(u)) <= 16.64. A column whose x / T + kGumbelBound is below the best
// perturbed value so far cannot win, so kernels may skip its noise.
constexpr float kGumbelBound = 17.0f;

struct Philox4x32 {
  uint32_t v[4];
};

DMK_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                         uint32_t c3, uint32_t k0, uint32_t k1) {
#pragma unroll
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

// 23 random bits -> u in (0, 1); both steps are exact in float32.
DMK_HOST_DEVICE float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(static_cast<int32_t>(bits >> 9)) * 0x1p-23f + 0x1p-24f;
}

// Columns per noise group and Philox blocks per group (see the layout above).
constexpr int64_t kNoiseGroup = 32;
constexpr int64_t kNoiseBlocksPerGroup = 8;

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

}  // namespace dmkernels
