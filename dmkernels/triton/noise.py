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
