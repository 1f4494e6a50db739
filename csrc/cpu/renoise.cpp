// renoise_ on the CPU: the canvas update of a uniform-state diffusion step
// (DiffusionGemma). Per position of a row that is not frozen: the accepted
// sample, or a uniform random token in [0, V) from renoise_'s Philox stream
// (common/noise.h, "Re-noising"), a pure function of (seed, offset, b * L + l).
// One Philox call serves two neighbouring flat positions; a row is drawn in
// chunks of kLanes calls (2 * kLanes positions) computed lane by lane in plain
// loops, which the compiler vectorises (integer operations only, so the tokens
// are the scalar spec's whatever it does). `noised` counts the random tokens per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace dmkernels {
namespace {

constexpr int kLanes = 16;

// Tokens of the flat positions 2 * pair0 .. 2 * pair0 + 2 * kLanes - 1: noise.h's
// renoise_block and renoise_token, kLanes calls side by side.
void renoise_chunk(const NoiseKey& key, uint64_t pair0, uint64_t vocab, uint64_t* tokens) {
  // 32-bit words held in 64-bit lanes: (c & 0xFFFFFFFF) * M is the widening
  // multiply compilers vectorise (vpmuludq), where a uint32 * uint32 -> uint64
  // over arrays of uint32 is not vectorised.
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  uint64_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t pair = pair0 + static_cast<uint64_t>(j);
    c0[j] = kRenoiseStream | (pair & kRenoisePairMask);
    c1[j] = (pair >> 30) & kLow;
    c2[j] = key.offset_lo;
    c3[j] = key.offset_hi;
  }
  uint32_t k0 = key.seed_lo, k1 = key.seed_hi;
  for (int round = 0; round < 10; ++round) {
    for (int j = 0; j < kLanes; ++j) {
      const uint64_t p0 = (c0[j] & kLow) * uint64_t{kPhiloxM0};
      const uint64_t p1 = (c2[j] & kLow) * uint64_t{kPhiloxM1};
      const uint64_t n0 = (p1 >> 32) ^ c1[j] ^ k0;
      const uint64_t n2 = (p0 >> 32) ^ c3[j] ^ k1;
      c1[j] = p1 & kLow;
      c3[j] = p0 & kLow;
      c0[j] = n0;
      c2[j] = n2;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int j = 0; j < kLanes; ++j) {
    tokens[2 * j] = mulhi_u64(c0[j] | (c1[j] << 32), vocab);
    tokens[2 * j + 1] = mulhi_u64(c2[j] | (c3[j] << 32), vocab);
  }
}

template <typename X, typename S>
void renoise_rows(at::Tensor& canvas, const at::Tensor& sample, const at::Tensor& accept,
                  const std::optional<at::Tensor>& frozen, uint64_t vocab, NoiseKey key, at::Tensor& noised) {
  X* cp = canvas.data_ptr<X>();
  const S* sp = sample.const_data_ptr<S>();
  const bool* ap = accept.const_data_ptr<bool>();
  const bool* fp = frozen.has_value() ? frozen->const_data_ptr<bool>() : nullptr;
  const int64_t fs0 = frozen.has_value() ? frozen->stride(0) : 0;
  int64_t* np = noised.data_ptr<int64_t>();
  const int64_t B = canvas.size(0), L = canvas.size(1);
  const int64_t cs0 = canvas.stride(0), cs1 = canvas.stride(1), ss0 = sample.stride(0), ss1 = sample.stride(1);
  const int64_t as0 = accept.stride(0), as1 = accept.stride(1);
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(L, 1)), [&](int64_t begin, int64_t end) {
    uint64_t tokens[2 * kLanes];
    for (int64_t b = begin; b < end; ++b) {
      if (fp != nullptr && fp[b * fs0]) {
        np[b] = 0;
        continue;
      }
      X* cr = cp + b * cs0;
      const S* sr = sp + b * ss0;
      const bool* ar = ap + b * as0;
      int64_t count = 0;
      const uint64_t first = static_cast<uint64_t>(b * L);  // flat index of position 0
      // Chunks start at an even flat index (a pair's first position), so a row
      // of odd length or odd start begins mid-chunk.
      for (uint64_t chunk = first & ~uint64_t{1}; chunk < first + static_cast<uint64_t>(L); chunk += 2 * kLanes) {
        renoise_chunk(key, chunk >> 1, vocab, tokens);
        const uint64_t lo = std::max(chunk, first), hi = std::min(chunk + 2 * kLanes, first + static_cast<uint64_t>(L));
        for (uint64_t flat = lo; flat < hi; ++flat) {
          const int64_t i = static_cast<int64_t>(flat - first);
          const bool take = ar[i * as1];
          cr[i * cs1] = take ? static_cast<X>(sr[i * ss1]) : static_cast<X>(tokens[flat - chunk]);  // < V fits X
          count += !take;
        }
      }
      np[b] = count;
    }
  });
}

// int64 samples written into an int32 canvas would wrap. Reading them is free on
// the CPU, so the written ones are checked before anything is written (not on the GPU).
void check_samples_fit_int32(const at::Tensor& sample, const at::Tensor& accept,
                             const std::optional<at::Tensor>& frozen) {
  const int64_t* sp = sample.const_data_ptr<int64_t>();
  const bool* ap = accept.const_data_ptr<bool>();
  const int64_t B = sample.size(0), L = sample.size(1);
  for (int64_t b = 0; b < B; ++b) {
    if (frozen.has_value() && frozen->const_data_ptr<bool>()[b * frozen->stride(0)]) continue;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t tok = sp[b * sample.stride(0) + i * sample.stride(1)];
      TORCH_CHECK_VALUE(!ap[b * accept.stride(0) + i * accept.stride(1)] || tok <= std::numeric_limits<int32_t>::max(),
                        "dmkernels.renoise_: sample[", b, ", ", i, "] = ", tok, " does not fit canvas's dtype int32");
    }
  }
}

at::Tensor renoise_cpu(at::Tensor& canvas, const at::Tensor& sample, const at::Tensor& accept,
                       const std::optional<at::Tensor>& frozen, int64_t vocab_size, int64_t seed, int64_t offset,
                       const std::optional<at::Tensor>& rng) {
  check_renoise_args(canvas, sample, accept, frozen, vocab_size, seed, offset, rng);
  read_cpu_rng("renoise_", rng, seed, offset);
  at::Tensor noised = new_renoise_output(canvas);
  if (canvas.scalar_type() == at::kInt && sample.scalar_type() == at::kLong) {
    check_samples_fit_int32(sample, accept, frozen);
  }
  const NoiseKey key = make_noise_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  const uint64_t vocab = static_cast<uint64_t>(vocab_size);
  const bool c64 = canvas.scalar_type() == at::kLong, s64 = sample.scalar_type() == at::kLong;
  if (c64 && s64) renoise_rows<int64_t, int64_t>(canvas, sample, accept, frozen, vocab, key, noised);
  else if (c64) renoise_rows<int64_t, int32_t>(canvas, sample, accept, frozen, vocab, key, noised);
  else if (s64) renoise_rows<int32_t, int64_t>(canvas, sample, accept, frozen, vocab, key, noised);
  else renoise_rows<int32_t, int32_t>(canvas, sample, accept, frozen, vocab, key, noised);
  return noised;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmkernels, CPU, m) { m.impl("renoise_", &renoise_cpu); }

}  // namespace dmkernels
