"""The shared Gumbel noise (csrc/common/noise.h) as Triton device functions.

Bit for bit the same as the C++ header and dmkernels/reference/noise.py:
Philox4x32-10 on uint32 (``tl.umulhi`` for the high word, wrapping ``*`` for the
low word), 23 bits -> ``u`` in (0, 1), and ``-log_f32(-log_f32(u))`` with the
header's own float32 log polynomial, one rounding per multiply and add. Kernels
that call these must be launched with ``enable_fp_fusion=False`` (no FMA
contraction), as ``gumbel_noise`` below does.

Layout: column ``c`` of row ``r`` takes word ``(c // 8) % 4`` of the Philox block
``(c // 32) * 8 + c % 8``. A tile of whole noise groups is handled as a
``[G, 4, 8]`` tensor (group, word, lane) whose row-major order is the column
order, so one Philox call per (group, lane) serves the four words of the tile.

The hierarchical sampler of token_stats (noise.h, "Hierarchical Gumbel-max")
adds ``exp_f32`` (with ``tl.fma`` where the spec fuses: one rounding, also in
the interpreter), ``group_sum32`` (the halving tree written out as sums over
axes of size 2, which are order-free) and ``group_gumbel`` (the group stream:
counter word 0 with its top bit set).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)

# log_f32 (noise.h): Q(f) ~ log1p(f) / f, float32 values.
LOG_Q0: tl.constexpr = tl.constexpr(1.0)
LOG_Q1: tl.constexpr = tl.constexpr(-0.49999988079071045)
LOG_Q2: tl.constexpr = tl.constexpr(0.3333418667316437)
LOG_Q3: tl.constexpr = tl.constexpr(-0.25002074241638184)
LOG_Q4: tl.constexpr = tl.constexpr(0.19956833124160767)
LOG_Q5: tl.constexpr = tl.constexpr(-0.16562391817569733)
LOG_Q6: tl.constexpr = tl.constexpr(0.14952263236045837)
LOG_Q7: tl.constexpr = tl.constexpr(-0.143668532371521)
LOG_Q8: tl.constexpr = tl.constexpr(0.08722376823425293)
LN2_F32: tl.constexpr = tl.constexpr(0.693147182464599609375)
SQRT2_F32: tl.constexpr = tl.constexpr(1.41421353816986083984375)

# Largest Gumbel value the mapping can produce is 16.64 (noise.h kGumbelBound).
GUMBEL_BOUND: tl.constexpr = tl.constexpr(17.0)
# Largest K_g - m_g in units of s (noise.h kGroupKeyBound).
GROUP_KEY_BOUND: tl.constexpr = tl.constexpr(21.0)
GROUP_STREAM: tl.constexpr = tl.constexpr(0x80000000)

# exp_f32 (noise.h), float32 values.
LOG2E_F32: tl.constexpr = tl.constexpr(1.4426950216293335)
EXP_ROUND: tl.constexpr = tl.constexpr(12582912.0)
EXP_C1: tl.constexpr = tl.constexpr(0.693359375)
EXP_C2: tl.constexpr = tl.constexpr(-0.00021219444170128554)
EXP_FLUSH: tl.constexpr = tl.constexpr(-86.0)
EXP_Q1: tl.constexpr = tl.constexpr(0.4999999403953552)
EXP_Q2: tl.constexpr = tl.constexpr(0.16666431725025177)
EXP_Q3: tl.constexpr = tl.constexpr(0.04166799411177635)
EXP_Q4: tl.constexpr = tl.constexpr(0.008374135009944439)
EXP_Q5: tl.constexpr = tl.constexpr(0.0013843962224200368)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123's Philox4x32 with 10 rounds on uint32 tensors (broadcasting)."""
    m0 = tl.full((1,), PHILOX_M0, tl.uint32)
    m1 = tl.full((1,), PHILOX_M1, tl.uint32)
    for _ in tl.static_range(10):
        n0 = tl.umulhi(m1, c2) ^ c1 ^ k0
        n1 = tl.mul(m1, c2, sanitize_overflow=False)  # low word: uint32 wraparound
        n2 = tl.umulhi(m0, c0) ^ c3 ^ k1
        n3 = tl.mul(m0, c0, sanitize_overflow=False)
        c0 = n0
        c1 = n1
        c2 = n2
        c3 = n3
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def uniform_from_bits(bits):
    """uint32 bits -> float32 u in (0, 1): ``(bits >> 9) * 2^-23 + 2^-24``, exact."""
    return (bits >> 9).to(tl.int32).to(tl.float32) * 1.1920928955078125e-07 + 5.9604644775390625e-08


@triton.jit
def log_f32(x):
    """noise.h's float32 log of positive normal floats, the same operations in the same order."""
    bits = x.to(tl.uint32, bitcast=True)
    e = (bits >> 23).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > SQRT2_F32
    m = tl.where(big, m * 0.5, m)
    e = e + big.to(tl.int32)
    f = m - 1.0
    q = tl.full(f.shape, LOG_Q8, tl.float32)
    q = q * f + LOG_Q7
    q = q * f + LOG_Q6
    q = q * f + LOG_Q5
    q = q * f + LOG_Q4
    q = q * f + LOG_Q3
    q = q * f + LOG_Q2
    q = q * f + LOG_Q1
    q = q * f + LOG_Q0
    return e.to(tl.float32) * LN2_F32 + f * q


@triton.jit
def gumbel(bits):
    """Gumbel(0, 1) float32 from uint32 bits."""
    return -log_f32(-log_f32(uniform_from_bits(bits)))


@triton.jit
def exp_f32(d):
    """noise.h's exp_f32 of float32 d <= 0: the same operations in the same order
    (tl.fma where the header has DMK_FMA). A NaN d stays NaN (the comparison is false)."""
    d = tl.where(d < EXP_FLUSH, EXP_FLUSH, d)
    t = tl.fma(d, LOG2E_F32, EXP_ROUND)
    n = t - EXP_ROUND
    r = tl.fma(-n, EXP_C1, d)
    r = tl.fma(-n, EXP_C2, r)
    q = tl.full(d.shape, EXP_Q5, tl.float32)
    q = tl.fma(q, r, EXP_Q4)
    q = tl.fma(q, r, EXP_Q3)
    q = tl.fma(q, r, EXP_Q2)
    q = tl.fma(q, r, EXP_Q1)
    q = tl.fma(q, r, 1.0)
    p = tl.fma(r, q, 1.0)
    sbits = (t.to(tl.int32, bitcast=True) + (127 - 0x4B400000)) << 23
    return p * sbits.to(tl.float32, bitcast=True)


@triton.jit
def group_sum32(e, G: tl.constexpr):
    """noise.h's group_sum32 of each row of e [G, 32]: a[k] + a[k + h] for h = 16 .. 1,
    each level a sum over an axis of size 2 (one add, order-free). Returns [G]."""
    e = tl.sum(tl.reshape(e, [G, 2, 16]), axis=1)
    e = tl.sum(tl.reshape(e, [G, 2, 8]), axis=1)
    e = tl.sum(tl.reshape(e, [G, 2, 4]), axis=1)
    e = tl.sum(tl.reshape(e, [G, 2, 2]), axis=1)
    e = tl.sum(tl.reshape(e, [G, 2, 1]), axis=1)
    return tl.reshape(e, [G])


@triton.jit
def group_gumbel(groups, row, seed_lo, seed_hi, offset_lo, offset_hi):
    """Gumbel of noise groups ``groups`` (int tensor) of ``row``: the group stream of
    noise.h, block GROUP_STREAM | ((g // 32) * 8 + g % 8), word (g // 8) % 4."""
    g = groups.to(tl.int64)
    block = ((g // 32) * 8 + g % 8 + GROUP_STREAM).to(tl.uint32)
    word = (g // 8) % 4
    c1 = tl.zeros_like(block) + row.to(tl.uint32)
    c2 = tl.zeros_like(block) + offset_lo.to(tl.uint32)
    c3 = tl.zeros_like(block) + offset_hi.to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(block, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    return gumbel(tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3))))


@triton.jit
def noise_bits_tile(group0, G: tl.constexpr, row, seed_lo, seed_hi, offset_lo, offset_hi):
    """uint32 noise words of the [G, 4, 8] tile of columns ``group0 * 32 + arange(G * 32)``
    of ``row`` (row-major order = column order). ``group0`` is the first noise group."""
    g = tl.arange(0, G)[:, None, None]
    lane = tl.arange(0, 8)[None, None, :]
    word = tl.arange(0, 4)[None, :, None]
    block = ((group0 + g) * 8 + lane).to(tl.uint32)  # [G, 1, 8]
    c1 = tl.zeros_like(block) + row.to(tl.uint32)
    c2 = tl.zeros_like(block) + offset_lo.to(tl.uint32)
    c3 = tl.zeros_like(block) + offset_hi.to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(block, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    return tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def _gumbel_noise_kernel(out_ptr, V, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    G: tl.constexpr = BLOCK_V // 32
    cols = (tile * BLOCK_V + tl.arange(0, G)[:, None, None] * 32 + tl.arange(0, 4)[None, :, None] * 8
            + tl.arange(0, 8)[None, None, :])
    bits = noise_bits_tile(tile * G, G, row, seed_lo, seed_hi, offset_lo, offset_hi)
    g = gumbel(bits)
    tl.store(out_ptr + row.to(tl.int64) * V + cols, g, mask=cols < V)


def split_u64(value: int) -> tuple[int, int]:
    """(low, high) 32-bit words of a non-negative integer below 2**64."""
    return value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF


def gumbel_noise(seed: int, offset: int, rows: int, num_columns: int, device="cpu") -> torch.Tensor:
    """float32 noise [rows, num_columns] for rows 0 .. rows - 1 (for tests: it must equal
    dmkernels.reference.noise.gumbel_noise bit for bit)."""
    out = torch.empty(rows, num_columns, dtype=torch.float32, device=device)
    BLOCK_V = max(32, min(1024, triton.next_power_of_2(num_columns)))
    if rows and num_columns:
        seed_lo, seed_hi = split_u64(seed)
        offset_lo, offset_hi = split_u64(offset)
        _gumbel_noise_kernel[(rows, triton.cdiv(num_columns, BLOCK_V))](
            out, num_columns, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK_V=BLOCK_V, enable_fp_fusion=False
        )
    return out


@triton.jit
def _exp_kernel(d_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + i, exp_f32(tl.load(d_ptr + i, mask=i < n, other=0.0)), mask=i < n)


@triton.jit
def _group_sum_kernel(e_ptr, out_ptr, G: tl.constexpr):
    k = tl.arange(0, G)[:, None] * 32 + tl.arange(0, 32)[None, :]
    tl.store(out_ptr + tl.arange(0, G), group_sum32(tl.load(e_ptr + k), G))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi", "row"])
def _group_gumbel_kernel(out_ptr, n, row, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK: tl.constexpr):
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + g, group_gumbel(g, row, seed_lo, seed_hi, offset_lo, offset_hi), mask=g < n)


def exp_f32_tensor(d: torch.Tensor) -> torch.Tensor:
    """exp_f32 of a float32 tensor (for tests: bit for bit the reference's)."""
    d = d.contiguous().reshape(-1)
    out = torch.empty_like(d)
    if d.numel():
        _exp_kernel[(triton.cdiv(d.numel(), 1024),)](d, out, d.numel(), BLOCK=1024, enable_fp_fusion=False)
    return out


def group_sum32_tensor(e: torch.Tensor) -> torch.Tensor:
    """group_sum32 of each row of a float32 [G, 32] tensor, G a power of two (for tests)."""
    e = e.contiguous()
    out = torch.empty(e.shape[0], dtype=torch.float32, device=e.device)
    _group_sum_kernel[(1,)](e, out, G=e.shape[0], enable_fp_fusion=False)
    return out


def group_gumbel_tensor(seed: int, offset: int, row: int, num_groups: int, device="cpu") -> torch.Tensor:
    """Group noise of groups 0 .. num_groups - 1 of one row (for tests)."""
    out = torch.empty(num_groups, dtype=torch.float32, device=device)
    seed_lo, seed_hi = split_u64(seed)
    offset_lo, offset_hi = split_u64(offset)
    _group_gumbel_kernel[(triton.cdiv(num_groups, 256),)](out, num_groups, row, seed_lo, seed_hi, offset_lo,
                                                          offset_hi, BLOCK=256, enable_fp_fusion=False)
    return out


@triton.jit
def seed_words(rng_ptr, seed_lo, seed_hi, offset_lo, offset_hi, HAS_RNG: tl.constexpr):
    """(seed, offset) as uint32 words: the arguments, or read on the device from an
    int64 (seed, offset) rng tensor when one is given (a CUDA graph replays fresh noise)."""
    if HAS_RNG:
        rng_seed = tl.load(rng_ptr)
        rng_offset = tl.load(rng_ptr + 1)
        seed_lo = rng_seed.to(tl.uint32)
        seed_hi = (rng_seed >> 32).to(tl.uint32)
        offset_lo = rng_offset.to(tl.uint32)
        offset_hi = (rng_offset >> 32).to(tl.uint32)
    return seed_lo, seed_hi, offset_lo, offset_hi
