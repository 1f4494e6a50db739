// Selection ops and commit_ on the GPU: device code only (no torch).
//
// One block per row. Scores are compared through order-preserving 64-bit keys
// of their float64 value (every input dtype converts exactly), NaN mapped below
// -inf and -0.0 folded onto +0.0, so the ranking is the CPU kernels' exactly:
// higher score first, NaN after every number, ties to the lower position.
//   select_topk: radix select of the k-th key (8 bits per pass, a 256-bin
//     shared histogram), then the ties at that key by lowest position (an
//     ordered block scan). k is read from device memory.
//   select_threshold / select_group: one sweep plus a block reduction.
//   select_factor / select_entropy_bounded: the rule walks the ranking from the
//     best; each step extracts the next best by a block arg-max. The rules stop
//     after a few positions, so this costs a few reductions per row.
//   commit_: one sweep, branch-free, plus a count of the masks left.
#pragma once

#include <cstdint>

namespace dmkernels {
namespace cuda {

constexpr int kSelectThreads = 256;

__device__ __forceinline__ uint64_t rank_key(double s) {
  if (s != s) return 0;  // NaN: below every number
  if (s == 0.0) s = 0.0;  // -0.0 == +0.0, as the CPU comparison sees it
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(s));
  return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ull);
}

// Block-wide sum of an int; every thread gets the total.
__device__ __forceinline__ int64_t block_sum(int64_t v, int64_t* scratch /* 32 */) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0;
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

// Block-wide best (key, position): higher key, then lower position. All threads get it.
struct Best {
  uint64_t key;
  int64_t pos;  // -1: none
};

__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  if (a.pos < 0) return false;
  if (b.pos < 0) return true;
  return a.key > b.key || (a.key == b.key && a.pos < b.pos);
}

__device__ __forceinline__ Best block_best(Best v, Best* scratch /* 32 */) {
  for (int d = 16; d > 0; d >>= 1) {
    Best o{__shfl_down_sync(0xffffffffu, v.key, d), __shfl_down_sync(0xffffffffu, v.pos, d)};
    if (better(o, v)) v = o;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : Best{0, -1};
    for (int d = 16; d > 0; d >>= 1) {
      Best o{__shfl_down_sync(0xffffffffu, v.key, d), __shfl_down_sync(0xffffffffu, v.pos, d)};
      if (better(o, v)) v = o;
    }
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

// Strided [B, L] views of the inputs (element strides).
template <typename S>
struct Rows {
  const S* data;
  int64_t stride0, stride1;
  __device__ __forceinline__ S at(int64_t b, int64_t i) const { return data[b * stride0 + i * stride1]; }
};

template <typename S>
__global__ void __launch_bounds__(kSelectThreads)
    select_topk_kernel(Rows<S> scores, Rows<bool> eligible, const int64_t* __restrict__ k, int64_t L,
                       bool* __restrict__ out) {
  __shared__ int64_t scratch[32];
  __shared__ int64_t hist[256];
  __shared__ uint64_t prefix_shared;
  __shared__ int64_t remaining_shared;
  const int64_t b = blockIdx.x;
  bool* row_out = out + b * L;
  int64_t n = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) n += eligible.at(b, i);
  n = block_sum(n, scratch);
  const int64_t want = k[b] < 0 ? 0 : (k[b] < n ? k[b] : n);  // negative k: nothing (every backend)
  uint64_t prefix = 0, prefix_mask = 0;
  int64_t remaining = want;
  if (want > 0 && want < n) {
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
        if (!eligible.at(b, i)) continue;
        const uint64_t key = rank_key(static_cast<double>(scores.at(b, i)));
        if ((key & prefix_mask) == prefix) atomicAdd(reinterpret_cast<unsigned long long*>(&hist[(key >> shift) & 255]), 1ull);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int64_t above = 0;
        int d = 255;
        for (; d > 0 && above + hist[d] < remaining; --d) above += hist[d];
        remaining_shared = remaining - above;
        prefix_shared = prefix | (static_cast<uint64_t>(d) << shift);
      }
      __syncthreads();
      remaining = remaining_shared;
      prefix = prefix_shared;
      prefix_mask |= 0xFFull << shift;
      __syncthreads();
    }
  }
  // Keys above the k-th key are in; `remaining` of the keys equal to it, lowest positions first.
  const bool take_all = want >= n;
  int64_t taken_before = 0;  // equal keys taken in earlier tiles
  for (int64_t base = 0; base < L; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    bool in = false, tie = false;
    if (i < L && eligible.at(b, i) && want > 0) {
      const uint64_t key = rank_key(static_cast<double>(scores.at(b, i)));
      in = take_all || key > prefix;
      tie = !take_all && key == prefix;
    }
    // Ordered count of ties before this thread in the tile (warp ballots + warp totals).
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = __popc(ballot);
    __syncthreads();
    int64_t before = taken_before + __popc(ballot & ((1u << lane) - 1u));
    int64_t tile_total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      if (w < warp) before += scratch[w];
      tile_total += scratch[w];
    }
    if (i < L) row_out[i] = in || (tie && before < remaining);
    taken_before += tile_total;
  }
}

template <typename S>
__global__ void __launch_bounds__(kSelectThreads)
    select_threshold_kernel(Rows<S> scores, Rows<bool> eligible, double threshold, int64_t L, bool* __restrict__ out) {
  __shared__ int64_t scratch[32];
  __shared__ Best best_scratch[32];
  const int64_t b = blockIdx.x;
  int64_t any = 0;
  Best best{0, -1};
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    const bool e = eligible.at(b, i);
    const double s = static_cast<double>(scores.at(b, i));
    const bool in = e && s >= threshold;
    out[b * L + i] = in;
    any += in;
    const Best c{rank_key(s), e ? i : -1};
    if (better(c, best)) best = c;
  }
  any = block_sum(any, scratch);
  best = block_best(best, best_scratch);
  if (threadIdx.x == 0 && any == 0 && best.pos >= 0) out[b * L + best.pos] = true;
}

// Walks a row's eligible positions best first (rank by `key_of`), calling
// accept(n, pos) on thread 0 until it refuses; marks the accepted ones, and the
// first position even when refused (the rules commit at least one).
template <typename KeyOf, typename Accept>
__device__ void walk_ranking(int64_t b, Rows<bool> eligible, int64_t L, bool* row_out, KeyOf key_of, Accept accept) {
  __shared__ Best best_scratch[32];
  __shared__ int go_on;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) row_out[i] = false;
  __syncthreads();
  for (int64_t n = 0; n < L; ++n) {
    Best best{0, -1};
    for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
      if (!eligible.at(b, i) || row_out[i]) continue;
      const Best c{key_of(i), i};
      if (better(c, best)) best = c;
    }
    best = block_best(best, best_scratch);
    if (threadIdx.x == 0) {
      const bool ok = best.pos >= 0 && accept(n, best.pos);
      if (best.pos >= 0 && (ok || n == 0)) row_out[best.pos] = true;
      go_on = ok;
    }
    __syncthreads();
    if (!go_on) break;
  }
}

template <typename S>
__global__ void __launch_bounds__(kSelectThreads)
    select_factor_kernel(Rows<S> scores, Rows<bool> eligible, double factor, int64_t L, bool* __restrict__ out) {
  const int64_t b = blockIdx.x;
  walk_ranking(
      b, eligible, L, out + b * L, [&](int64_t i) { return rank_key(static_cast<double>(scores.at(b, i))); },
      [&](int64_t n, int64_t i) {
        return static_cast<double>(n + 2) * (1.0 - static_cast<double>(scores.at(b, i))) <= factor;
      });
}

template <typename S, typename H>
__global__ void __launch_bounds__(kSelectThreads)
    select_entropy_bounded_kernel(Rows<S> error, Rows<H> entropy, Rows<bool> eligible, double gamma, int64_t L,
                                  bool* __restrict__ out) {
  const int64_t b = blockIdx.x;
  double sum = 0.0, peak = -INFINITY;  // thread 0's running prefix sums, in rank order
  walk_ranking(
      b, eligible, L, out + b * L, [&](int64_t i) { return rank_key(-static_cast<double>(error.at(b, i))); },
      [&](int64_t, int64_t i) {
        const double h = static_cast<double>(entropy.at(b, i));
        sum += h;
        peak = fmax(peak, h);
        return sum - peak <= gamma;
      });
}

template <typename G, typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_group_kernel(Rows<bool> eligible, Rows<G> groups, const T* __restrict__ step, int64_t step_stride, int64_t L,
                        bool* __restrict__ out) {
  __shared__ Best best_scratch[32];
  const int64_t b = blockIdx.x;
  // The smallest eligible group, as the largest key of -group.
  Best first{0, -1};
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    if (!eligible.at(b, i)) continue;
    const Best c{rank_key(-static_cast<double>(groups.at(b, i))), i};
    if (better(c, first)) first = c;
  }
  first = block_best(first, best_scratch);
  int64_t limit = static_cast<int64_t>(step[b * step_stride]);
  if (first.pos >= 0) {
    const int64_t g = static_cast<int64_t>(groups.at(b, first.pos));
    limit = limit > g ? limit : g;
  }
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    out[b * L + i] = eligible.at(b, i) && static_cast<int64_t>(groups.at(b, i)) <= limit;
  }
}

template <typename X, typename T>
__global__ void __launch_bounds__(kSelectThreads)
    commit_kernel(X* __restrict__ x, int64_t xs0, int64_t xs1, Rows<T> token, Rows<bool> select, int64_t mask_id,
                  int64_t L, bool* __restrict__ changed, int64_t* __restrict__ remaining) {
  __shared__ int64_t scratch[32];
  const int64_t b = blockIdx.x;
  int64_t left = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    X* cell = x + b * xs0 + i * xs1;
    const int64_t current = static_cast<int64_t>(*cell);
    const int64_t tok = static_cast<int64_t>(token.at(b, i));
    const bool write = current == mask_id && select.at(b, i) && tok >= 0 && tok != mask_id;
    if (write) *cell = static_cast<X>(tok);
    changed[b * L + i] = write;
    left += (write ? tok : current) == mask_id;
  }
  left = block_sum(left, scratch);
  if (threadIdx.x == 0) remaining[b] = left;
}

}  // namespace cuda
}  // namespace dmkernels
