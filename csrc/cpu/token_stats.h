// token_stats' row reduction, shared with the other CPU ops that sample the
// same way (denoise_stats): one row at a time, the same code and so the same
// tokens as token_stats itself.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../common/noise.h"

namespace dmkernels {

// Floats of scratch space a row reduction needs (one chunk, see token_stats.cpp).
constexpr int64_t kTokenStatsScratch = 2048;

struct TokenStatsParams {
  bool sample;           // temperature > 0
  bool tempered_scores;  // scores describe softmax(x / T) instead of softmax(x)
  float inv_temperature; // float32(1 / T)
  KeyScales key_scales;  // y = x * c + g * s (noise.h)
  float inv_s;           // 1 / s, a power of two
  bool shared;           // sampling with scores that describe the sampled distribution
  NoiseKey key;
};

// token_stats of one row: token -1 and NaN scores for a row with no distribution.
struct TokenStatsRow {
  int64_t token;
  float confidence, margin, entropy;
};

TokenStatsParams token_stats_params(double temperature, bool tempered_scores, int64_t seed, int64_t offset);

// token_stats of the V logits at x (unit stride) as row `noise_row` of a call;
// `scratch` holds kTokenStatsScratch floats, 64-byte aligned.
template <typename T>
TokenStatsRow token_stats_row(const T* x, int64_t V, uint32_t noise_row, const TokenStatsParams& p, float* scratch);

extern template TokenStatsRow token_stats_row<float>(const float*, int64_t, uint32_t, const TokenStatsParams&,
                                                     float*);
extern template TokenStatsRow token_stats_row<c10::Half>(const c10::Half*, int64_t, uint32_t,
                                                         const TokenStatsParams&, float*);
extern template TokenStatsRow token_stats_row<c10::BFloat16>(const c10::BFloat16*, int64_t, uint32_t,
                                                             const TokenStatsParams&, float*);

}  // namespace dmkernels
