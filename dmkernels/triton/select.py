"""Triton kernels for the selection ops: select_topk, select_threshold,
select_factor, select_entropy_bounded and select_group.

One program per row; the whole row (L up to tens of thousands) sits in one
block of BLOCK_L = next power of two positions, masked past L. Per-row values
(k, step) are read from device memory, so no op syncs with the host.

The ranking every rule shares (dmkernels/reference/ranking.py) is an integer
key per position, smaller first: scores are widened (float32 for fp32, bf16
and fp16, which is exact; float64 for fp64), -0.0 becomes +0.0, the IEEE bits
are mapped to an order-preserving signed integer and inverted so the highest
score has the smallest key. NaN gets the key just below the largest integer,
ineligible positions (and the padding past L) the largest. Ties in the key are
ties in the score; they go to the lower position.

- select_topk finds the k-th smallest key by bisection over the key bits (32
  or 64 counting passes over the row), then takes the keys below it and the
  first ties at it by a cumulative count: no sort, no O(L^2) rank.
- select_factor sorts the keys (the pass test depends only on the score, so
  the order among equal keys does not matter), finds the prefix length, and
  takes that many best positions as select_topk does.
- select_entropy_bounded sorts (key, position) pairs (packed in one int64 for
  32-bit keys, as two tensors for 64-bit keys), gathers the entropies in that
  order and sums them in float64. A parallel scan does not add in the
  reference's left-to-right order, so its sums may differ in the last bits:
  every prefix is classified as a certain pass, a certain failure, or too
  close to gamma to tell (a rounding bound on the difference between any two
  summation orders). Only when the first prefix that is not a certain pass is
  undecided does the program redo the sums one by one, in the reference's
  order, up to the first failure. Results are therefore exact.

The sort is a bitonic network of our own rather than tl.sort: it orders pairs,
and it finds partners with sums (tl.sort uses xor reductions, which the
interpreter runs element by element, seconds per row).
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl

from .._registry import triton_op

__all__ = [
    "select_entropy_bounded",
    "select_factor",
    "select_group",
    "select_threshold",
    "select_topk",
]

# ---------------------------------------------------------------------------
# Host helpers (shared with commit.py)
# ---------------------------------------------------------------------------


def poison_outputs() -> bool:
    """DMKERNELS_POISON_OUTPUTS=1 (the test suite) poisons fresh outputs."""
    return os.environ.get("DMKERNELS_POISON_OUTPUTS", "") == "1"


def block_size(L: int) -> int:
    return max(16, triton.next_power_of_2(max(L, 1)))


def num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def on_device(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _float_bits(value: float) -> int:
    """A float64 as the int64 with the same bits: Triton passes Python floats as
    float32, and the thresholds must be compared in float64."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _new_selection(eligible: torch.Tensor) -> torch.Tensor:
    out = torch.empty(eligible.shape, dtype=torch.bool, device=eligible.device)
    if poison_outputs():
        out.fill_(True)
    return out


# ---------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------


@triton.jit
def _widen(x, WIDE64: tl.constexpr):
    """float64 for fp64 inputs, float32 (exact) for fp32 / bf16 / fp16. bf16 is
    widened by its bits (the interpreter's conversion flushes subnormals)."""
    if WIDE64:
        v = x.to(tl.float64)
    elif x.dtype == tl.bfloat16:
        v = (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        v = x.to(tl.float32)
    return v


@triton.jit
def _rank_key(x, usable, KEY64: tl.constexpr, NEGATE: tl.constexpr):
    """Order-preserving integer key, smallest for the best position: higher
    score first, NaN after every number, unusable (ineligible, padding) last."""
    v = _widen(x, KEY64)
    if NEGATE:
        v = -v
    v = tl.where(v == 0.0, 0.0, v)  # -0.0 ties with +0.0
    if KEY64:
        bits = v.to(tl.int64, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFFFFFFFFFF)
        key = ordered ^ -1
        key = tl.where(v != v, 0x7FFFFFFFFFFFFFFE, key)
        key = tl.where(usable, key, 0x7FFFFFFFFFFFFFFF)
    else:
        bits = v.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        key = ordered ^ -1
        key = tl.where(v != v, 0x7FFFFFFE, key)
        key = tl.where(usable, key, 0x7FFFFFFF)
    return key


@triton.jit
def _key_value(key, KEY64: tl.constexpr):
    """The float64 score of a number's key (inverse of _rank_key)."""
    ordered = key ^ -1
    if KEY64:
        bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFFFFFFFFFF)
        v = bits.to(tl.float64, bitcast=True)
    else:
        bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
        v = bits.to(tl.float32, bitcast=True).to(tl.float64)
    return v


@triton.jit
def _nan_key(KEY64: tl.constexpr):
    if KEY64:
        k = tl.full([], 0x7FFFFFFFFFFFFFFE, tl.int64)
    else:
        k = tl.full([], 0x7FFFFFFE, tl.int32)
    return k


@triton.jit
def _min_key(KEY64: tl.constexpr):
    if KEY64:
        k = tl.full([], -0x8000000000000000, tl.int64)
    else:
        k = tl.full([], -0x80000000, tl.int32)
    return k


@triton.jit
def _take_best(key, t, count):
    """The `count` first positions in key order, given t = the count-th smallest
    key: all keys below t, then the lowest-index ties at t."""
    below = key < t
    n_below = tl.sum(below.to(tl.int32), axis=0)
    tie = key == t
    tie_rank = tl.cumsum(tie.to(tl.int32), axis=0) - 1
    return (below | (tie & (tie_rank < count - n_below))) & (count > 0)


@triton.jit
def _float_arg(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _bitonic_sort(key, val, BLOCK: tl.constexpr, N: tl.constexpr, PAIRED: tl.constexpr):
    """Ascending bitonic sort of BLOCK = 2 ** N integer keys (with PAIRED, of
    (key, val) pairs, lexicographically).

    The row is viewed as a [2] * N hypercube; a compare-exchange step along an
    axis meets each element with its partner across that axis (the pair's sum
    minus itself, exact in wrapping integer arithmetic) and keeps the smaller
    or the larger as its side and the direction of its run say. Written out
    in one function: the interpreter pays for every nested jit call."""
    k = tl.reshape(key, [2] * N)
    v = tl.reshape(val, [2] * N)
    for stage in tl.static_range(1, N + 1):
        if stage < N:  # runs of 2 ** stage alternate direction, the last is ascending
            flip = tl.reshape(tl.arange(0, 2), [1] * (N - 1 - stage) + [2] + [1] * stage)
        else:
            flip = tl.zeros([1] * N, tl.int32)
        for r in tl.static_range(stage):  # axis N - stage + r: bit stage - 1 - r of the position
            right = tl.reshape(tl.arange(0, 2), [1] * (N - stage + r) + [2] + [1] * (stage - 1 - r))
            other_k = tl.sum(k, N - stage + r, keep_dims=True) - k
            if PAIRED:
                other_v = tl.sum(v, N - stage + r, keep_dims=True) - v
                greater = (k > other_k) | ((k == other_k) & (v > other_v))
            else:
                greater = k > other_k
            swap = greater != ((flip ^ right) != 0)
            k = tl.where(swap, other_k, k)
            if PAIRED:
                v = tl.where(swap, other_v, v)
    return tl.reshape(k, [BLOCK]), tl.reshape(v, [BLOCK])


@triton.jit
def _rank_sort(key, cols, BLOCK: tl.constexpr, N: tl.constexpr, KEY64: tl.constexpr):
    """The row in ranking order: sorted keys and the positions they came from
    (ties by position). A 32-bit key and its position pack into one int64."""
    if KEY64:
        ranked, order = _bitonic_sort(key, cols, BLOCK, N, True)
    else:
        packed = (key.to(tl.int64) << 32) | cols.to(tl.int64)
        packed, _unused = _bitonic_sort(packed, packed, BLOCK, N, False)
        ranked = (packed >> 32).to(tl.int32)
        order = (packed & 0x7FFFFFFF).to(tl.int32)
    return ranked, order


@triton.jit
def _load_row(ptr, row, cols, inside, s0, s1, other):
    return tl.load(ptr + row * s0 + cols.to(tl.int64) * s1, mask=inside, other=other)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _topk_kernel(
    scores_ptr, k_ptr, elig_ptr, out_ptr, L,
    s_s0, s_s1, k_s0, e_s0, e_s1,
    BLOCK_L: tl.constexpr, KEY64: tl.constexpr, BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    x = _load_row(scores_ptr, row, cols, inside, s_s0, s_s1, 0.0)
    e = _load_row(elig_ptr, row, cols, inside, e_s0, e_s1, False) & inside
    key = _rank_key(x, e, KEY64, False)
    n_elig = tl.sum(e.to(tl.int32), axis=0)
    k = tl.load(k_ptr + row * k_s0).to(tl.int64)
    k = tl.minimum(tl.maximum(k, 0), n_elig.to(tl.int64)).to(tl.int32)
    # The largest t with #(key < t) < k is the k-th smallest key. Built one bit
    # at a time from the top, in offset binary (the sign bit first).
    t = _min_key(KEY64)
    zero = t ^ t
    t = tl.where(tl.sum((key < zero).to(tl.int32), axis=0) < k, zero, t)
    one = zero + 1
    for i in range(BITS - 1):
        cand = t | (one << (BITS - 2 - i))
        t = tl.where(tl.sum((key < cand).to(tl.int32), axis=0) < k, cand, t)
    sel = _take_best(key, t, k)
    tl.store(out_ptr + row * L + cols, sel, mask=inside)


@triton.jit(do_not_specialize=["thr_bits"])
def _threshold_kernel(
    scores_ptr, elig_ptr, out_ptr, L, thr_bits,
    s_s0, s_s1, e_s0, e_s1,
    BLOCK_L: tl.constexpr, KEY64: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    x = _load_row(scores_ptr, row, cols, inside, s_s0, s_s1, 0.0)
    e = _load_row(elig_ptr, row, cols, inside, e_s0, e_s1, False) & inside
    key = _rank_key(x, e, KEY64, False)
    best_key = tl.min(key, axis=0)
    best_col = tl.min(tl.where(key == best_key, cols, BLOCK_L), axis=0)
    n_elig = tl.sum(e.to(tl.int32), axis=0)
    above = _widen(x, KEY64).to(tl.float64) >= _float_arg(thr_bits)
    sel = e & (above | ((cols == best_col) & (n_elig > 0)))
    tl.store(out_ptr + row * L + cols, sel, mask=inside)


@triton.jit(do_not_specialize=["factor_bits"])
def _factor_kernel(
    scores_ptr, elig_ptr, out_ptr, L, factor_bits,
    s_s0, s_s1, e_s0, e_s1,
    BLOCK_L: tl.constexpr, LOG_L: tl.constexpr, KEY64: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    x = _load_row(scores_ptr, row, cols, inside, s_s0, s_s1, 0.0)
    e = _load_row(elig_ptr, row, cols, inside, e_s0, e_s1, False) & inside
    key = _rank_key(x, e, KEY64, False)
    n_elig = tl.sum(e.to(tl.int32), axis=0)
    # Sorted keys: c_1 >= c_2 >= ...; equal keys are equal scores, so their order
    # does not change which prefix lengths pass.
    ranked, _unused = _bitonic_sort(key, key, BLOCK_L, LOG_L, False)
    c = _key_value(ranked, KEY64)
    number = ranked < _nan_key(KEY64)  # eligible and not NaN
    passes = number & ((cols + 2).to(tl.float64) * (1.0 - c) <= _float_arg(factor_bits))
    count = tl.min(tl.where(passes, BLOCK_L, cols), axis=0)
    count = tl.maximum(count, (n_elig > 0).to(tl.int32))
    t = tl.max(tl.where(cols < count, ranked, _min_key(KEY64)), axis=0)
    sel = _take_best(key, t, count)
    tl.store(out_ptr + row * L + cols, sel, mask=inside)


@triton.jit(do_not_specialize=["gamma_bits"])
def _entropy_bounded_kernel(
    error_ptr, entropy_ptr, elig_ptr, out_ptr, L, gamma_bits,
    r_s0, r_s1, h_s0, h_s1, e_s0, e_s1,
    BLOCK_L: tl.constexpr, LOG_L: tl.constexpr, CHUNK: tl.constexpr,
    KEY64: tl.constexpr, H64: tl.constexpr,
):
    N_CHUNKS: tl.constexpr = BLOCK_L // CHUNK
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    err = _load_row(error_ptr, row, cols, inside, r_s0, r_s1, 0.0)
    e = _load_row(elig_ptr, row, cols, inside, e_s0, e_s1, False) & inside
    key = _rank_key(err, e, KEY64, True)  # ascending error == descending -error
    n_elig = tl.sum(e.to(tl.int32), axis=0)
    gamma = _float_arg(gamma_bits)

    # The positions in ranking order (key, then position).
    ranked, order = _rank_sort(key, cols, BLOCK_L, LOG_L, KEY64)
    usable = cols < n_elig  # the eligible positions come first
    h = _load_row(entropy_ptr, row, order, usable, h_s0, h_s1, 0.0)
    h = _widen(h, H64).to(tl.float64)
    h = tl.where(usable, h, 0.0)

    # Fast path: parallel scans, then a bound on how far any summation order
    # can be from the reference's left-to-right sums.
    is_nan = h != h
    nan_seen = tl.cumsum(is_nan.to(tl.int32), axis=0) > 0
    total = tl.cumsum(h, axis=0)
    size = tl.cumsum(tl.abs(h), axis=0)
    # Running max, NaN left out (a NaN fails its prefix anyway): an inclusive
    # scan over the row viewed as a [2] * LOG_L hypercube, one axis per step.
    peak = tl.reshape(tl.where(is_nan, float("-inf"), h), [2] * LOG_L)
    block_max = peak
    for i in tl.static_range(LOG_L):
        right = tl.reshape(tl.arange(0, 2), [1] * (LOG_L - 1 - i) + [2] + [1] * i) != 0
        left_max = tl.max(tl.where(right, float("-inf"), block_max), LOG_L - 1 - i, keep_dims=True)
        peak = tl.where(right, tl.maximum(peak, left_max), peak)
        block_max = tl.maximum(block_max, tl.max(block_max, LOG_L - 1 - i, keep_dims=True))
    peak = tl.reshape(peak, [BLOCK_L])
    spread = total - peak
    # |any order - exact| <= (n - 1) u sum|h| per order; 8 u (n + 4) (sum|h| + |S| + |M|)
    # also covers the rounding of the subtraction and of this comparison.
    slack = (cols + 4).to(tl.float64) * 8.881784197001252e-16 * (size + tl.abs(total) + tl.abs(peak))
    sure_pass = usable & ~nan_seen & (spread + slack <= gamma)
    sure_fail = ~usable | nan_seen | (spread - slack > gamma)
    first_open = tl.min(tl.where(sure_pass, BLOCK_L, cols), axis=0)
    first_fail = tl.min(tl.where(sure_fail, cols, BLOCK_L), axis=0)
    count = first_open

    # Undecided: redo the sums one by one in the reference's order (rare). The
    # entropies are read CHUNK at a time out of registers, by their bits.
    if first_open < first_fail:
        grid_bits = tl.reshape(h.to(tl.int64, bitcast=True), [N_CHUNKS, CHUNK])
        chunk_ids = tl.arange(0, N_CHUNKS)[:, None]
        lanes = tl.arange(0, CHUNK)
        chunk = tl.zeros([CHUNK], tl.int64)
        run_sum = tl.zeros([], tl.float64)
        run_max = tl.full([], float("-inf"), tl.float64)
        j = tl.zeros([], tl.int32)
        count = tl.zeros([], tl.int32)
        going = n_elig > 0
        while going:
            if j % CHUNK == 0:
                chunk = tl.sum(tl.where(chunk_ids == j // CHUNK, grid_bits, 0), axis=0)
            hj = tl.sum(tl.where(lanes == j % CHUNK, chunk, 0), axis=0).to(tl.float64, bitcast=True)
            run_sum = run_sum + hj
            run_max = tl.maximum(run_max, hj)
            ok = run_sum - run_max <= gamma
            j = j + 1
            count = tl.where(ok, j, count)
            going = ok & (j < n_elig)

    count = tl.maximum(count, (n_elig > 0).to(tl.int32))
    t = tl.max(tl.where(cols < count, ranked, _min_key(KEY64)), axis=0)
    sel = _take_best(key, t, count)
    tl.store(out_ptr + row * L + cols, sel, mask=inside)


@triton.jit
def _group_kernel(
    elig_ptr, groups_ptr, step_ptr, out_ptr, L,
    e_s0, e_s1, g_s0, g_s1, st_s0,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    e = _load_row(elig_ptr, row, cols, inside, e_s0, e_s1, False) & inside
    g = _load_row(groups_ptr, row, cols, inside, g_s0, g_s1, 0).to(tl.int64)
    step = tl.load(step_ptr + row * st_s0).to(tl.int64)
    first = tl.min(tl.where(e, g, 0x7FFFFFFFFFFFFFFF), axis=0)
    sel = e & (g <= tl.maximum(step, first))
    tl.store(out_ptr + row * L + cols, sel, mask=inside)


# ---------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------


@triton_op("select_topk")
def select_topk(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """clamp(k[b], 0, #eligible) best eligible positions per row."""
    out = _new_selection(eligible)
    B, L = scores.shape
    if out.numel():
        key64 = scores.dtype == torch.float64
        block = block_size(L)
        with on_device(scores):
            _topk_kernel[(B,)](
                scores, k, eligible, out, L, *scores.stride(), k.stride(0), *eligible.stride(),
                BLOCK_L=block, KEY64=key64, BITS=64 if key64 else 32, num_warps=num_warps(block),
            )
    return out


@triton_op("select_threshold")
def select_threshold(scores: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eligible positions with score >= threshold (float64), plus the best one."""
    out = _new_selection(eligible)
    B, L = scores.shape
    if out.numel():
        block = block_size(L)
        with on_device(scores):
            _threshold_kernel[(B,)](
                scores, eligible, out, L, _float_bits(threshold), *scores.stride(), *eligible.stride(),
                BLOCK_L=block, KEY64=scores.dtype == torch.float64, num_warps=num_warps(block),
            )
    return out


@triton_op("select_factor")
def select_factor(scores: torch.Tensor, eligible: torch.Tensor, factor: float) -> torch.Tensor:
    """Longest prefix of the ranking with (n + 1) * (1 - c_n) <= factor; at least one."""
    out = _new_selection(eligible)
    B, L = scores.shape
    if out.numel():
        block = block_size(L)
        with on_device(scores):
            _factor_kernel[(B,)](
                scores, eligible, out, L, _float_bits(factor), *scores.stride(), *eligible.stride(),
                BLOCK_L=block, LOG_L=block.bit_length() - 1, KEY64=scores.dtype == torch.float64,
                num_warps=num_warps(block),
            )
    return out


@triton_op("select_entropy_bounded")
def select_entropy_bounded(
    error: torch.Tensor, entropy: torch.Tensor, eligible: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Ascending error; longest prefix with sum(H) - max(H) <= gamma; at least one."""
    out = _new_selection(eligible)
    B, L = error.shape
    if out.numel():
        block = block_size(L)
        with on_device(error):
            _entropy_bounded_kernel[(B,)](
                error, entropy, eligible, out, L, _float_bits(gamma),
                *error.stride(), *entropy.stride(), *eligible.stride(),
                BLOCK_L=block, LOG_L=block.bit_length() - 1, CHUNK=min(64, block),
                KEY64=error.dtype == torch.float64, H64=entropy.dtype == torch.float64,
                num_warps=num_warps(block),
            )
    return out


@triton_op("select_group")
def select_group(eligible: torch.Tensor, groups: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Eligible positions with group <= max(step, first group still eligible)."""
    B, L = eligible.shape
    out = _new_selection(eligible)
    if out.numel():
        g_s0, g_s1 = (0, groups.stride(0)) if groups.dim() == 1 else groups.stride()
        st_s0 = step.stride(0) if step.dim() == 1 else 0
        block = block_size(L)
        with on_device(eligible):
            _group_kernel[(B,)](
                eligible, groups, step, out, L, *eligible.stride(), g_s0, g_s1, st_s0,
                BLOCK_L=block, num_warps=num_warps(block),
            )
    return out

