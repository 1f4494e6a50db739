"""Reference Gumbel noise: Philox4x32-10 in int64 torch ops.

The same mapping as csrc/common/noise.h (read that header for why this layout):
element (row, column) of a token_stats call gets ``g = -log_f32(-log_f32(u))`` with ``u``
made from word ``(column // 8) % 4`` of
``Philox4x32-10(counter=(block, row, offset_lo, offset_hi), key=(seed_lo, seed_hi))``,
``block = (column // 32) * 8 + column % 8``.
"""
from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# log_f32 (noise.h): Q(f) ~ log1p(f) / f on (sqrt(1/2) - 1, sqrt(2) - 1], float32 values.
LOG_Q = (1.0, -0.49999988079071045, 0.3333418667316437, -0.25002074241638184, 0.19956833124160767,
         -0.16562391817569733, 0.14952263236045837, -0.143668532371521, 0.08722376823425293)
LN2_F32 = 0.693147182464599609375
SQRT2_F32 = 1.41421353816986083984375


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for ``a, b < 2**32``.

    The 64-bit product overflows int64, so ``b`` is split into 16-bit halves:
    ``a * b = t + u * 2**16`` with ``t = a * b_lo`` and ``u = a * b_hi``, both < 2**48.
    """
    t = a * (b & 0xFFFF)
    u = a * (b >> 16)
    mid = t + ((u & 0xFFFF) << 16)
    return (u >> 16) + (mid >> 32), mid & _MASK32


def philox4x32_10(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random123's Philox4x32 with 10 rounds; counters are int64 tensors holding uint32 values."""
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def noise_bits(seed: int, offset: int, rows: torch.Tensor, num_columns: int) -> torch.Tensor:
    """uint32 random words (as int64) for ``rows`` (int64 [R]) x columns [0, num_columns)."""
    rows = rows.to(torch.int64).reshape(-1, 1)
    groups = (num_columns + 31) // 32
    blocks = torch.arange(groups * 8, dtype=torch.int64, device=rows.device).reshape(1, -1)
    words = philox4x32_10(
        blocks,
        rows & _MASK32,
        torch.tensor(offset & _MASK32, device=rows.device),
        torch.tensor((offset >> 32) & _MASK32, device=rows.device),
        seed & _MASK32,
        (seed >> 32) & _MASK32,
    )
    # [R, group, lane, word] -> columns group * 32 + word * 8 + lane
    by_block = torch.stack(words, dim=-1).reshape(rows.shape[0], groups, 8, 4)
    return by_block.transpose(-1, -2).reshape(rows.shape[0], groups * 32)[:, :num_columns]


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """23 bits -> float32 u in (0, 1); exact: ``(bits >> 9) * 2**-23 + 2**-24``."""
    return (bits >> 9).to(torch.float32) * 2.0**-23 + 2.0**-24


def log_f32(x: torch.Tensor) -> torch.Tensor:
    """The backends' own float32 log of positive normal floats, op for op (each torch
    op rounds once, as each multiply and add does in the kernels)."""
    bits = x.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).view(torch.float32)
    big = m > SQRT2_F32
    m = torch.where(big, m * 0.5, m)
    e = e + big.to(torch.int32)
    f = m - 1.0
    q = torch.full_like(f, LOG_Q[8])
    for c in reversed(LOG_Q[:8]):
        q = q * f + c
    return e.to(torch.float32) * LN2_F32 + f * q


def gumbel_noise(seed: int, offset: int, rows: torch.Tensor, num_columns: int) -> torch.Tensor:
    """float32 Gumbel(0, 1) noise [R, num_columns] for the given flat row indices."""
    u = uniform_from_bits(noise_bits(seed, offset, rows, num_columns))
    return -log_f32(-log_f32(u))
