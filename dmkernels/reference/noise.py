"""Reference Gumbel noise: Philox4x32-10 in int64 torch ops.

The same mapping as csrc/common/noise.h (read that header for why this layout):
element (row, column) of a token_stats call gets ``g = -log_f32(-log_f32(u))`` with ``u``
made from word ``(column // 8) % 4`` of
``Philox4x32-10(counter=(block, row, offset_lo, offset_hi), key=(seed_lo, seed_hi))``,
``block = (column // 32) * 8 + column % 8``.

``uniform_tokens`` is renoise_'s stream (a third one: counter word 0 with bit 30
set), 64 bits per position mapped to [0, V) by a multiply-high.

The hierarchical sampler of token_stats at T > 0 (noise.h, "Hierarchical
Gumbel-max") adds the canonical ``exp_f32``, the fixed group sum ``group_sum32``,
the group noise (a second Philox stream: counter word 0 with its top bit set)
and ``hierarchical_sample``, op for op as the kernels compute them.
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

# exp_f32 (noise.h): e^d = 2^n (1 + r Q(r)), float32 values.
LOG2E_F32 = 1.4426950216293335
EXP_C1 = 0.693359375
EXP_C2 = -0.00021219444170128554
EXP_FLUSH = -86.0
EXP_ROUND = 12582912.0  # 1.5 * 2**23
EXP_Q = (1.0, 0.4999999403953552, 0.16666431725025177, 0.04166799411177635, 0.008374135009944439,
         0.0013843962224200368)
GROUP_STREAM = 0x80000000
GROUP = 32
# renoise_'s stream (noise.h, "Re-noising"): counter word 0 = RENOISE_STREAM | (pair & RENOISE_PAIR_MASK).
RENOISE_STREAM = 0x40000000
RENOISE_PAIR_MASK = 0x3FFFFFFF


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


def keyed_philox(seed: int, offset: int, c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """The four words of one call of every stream (noise.h's NoiseKey): counter
    (c0, c1, offset_lo, offset_hi), key (seed_lo, seed_hi); stacked on a last dim of 4."""
    device = c0.device
    words = philox4x32_10(
        c0,
        c1,
        torch.tensor(offset & _MASK32, device=device),
        torch.tensor((offset >> 32) & _MASK32, device=device),
        seed & _MASK32,
        (seed >> 32) & _MASK32,
    )
    return torch.stack(words, dim=-1)


def noise_bits(seed: int, offset: int, rows: torch.Tensor, num_columns: int) -> torch.Tensor:
    """uint32 random words (as int64) for ``rows`` (int64 [R]) x columns [0, num_columns)."""
    rows = rows.to(torch.int64).reshape(-1, 1)
    groups = (num_columns + 31) // 32
    blocks = torch.arange(groups * 8, dtype=torch.int64, device=rows.device).reshape(1, -1)
    # [R, group, lane, word] -> columns group * 32 + word * 8 + lane
    by_block = keyed_philox(seed, offset, blocks, rows & _MASK32).reshape(rows.shape[0], groups, 8, 4)
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


def _words_at(seed: int, offset: int, rows: torch.Tensor, blocks: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Word ``words`` of Philox block ``blocks`` of row ``rows`` (broadcasting int64 tensors)."""
    rows, blocks, words = torch.broadcast_tensors(rows.to(torch.int64), blocks, words)
    return keyed_philox(seed, offset, blocks, rows & _MASK32).gather(-1, words.unsqueeze(-1)).squeeze(-1)


def gumbel_at(seed: int, offset: int, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Element noise of the given columns (int64, broadcast against ``rows``): the
    same values as ``gumbel_noise`` at those columns, without drawing the others."""
    bits = _words_at(seed, offset, rows, (columns // 32) * 8 + columns % 8, (columns // 8) % 4)
    return -log_f32(-log_f32(uniform_from_bits(bits)))


def group_gumbel(seed: int, offset: int, rows: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Gumbel of noise groups ``groups`` (int64, broadcast against ``rows``): the second
    Philox stream of noise.h, groups laid out like columns."""
    bits = _words_at(seed, offset, rows, GROUP_STREAM | ((groups // 32) * 8 + groups % 8), (groups // 8) % 4)
    return -log_f32(-log_f32(uniform_from_bits(bits)))


def fma_f32(a: torch.Tensor, b, c) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once (IEEE fma), exactly: the product of two
    float32 values is exact in float64; the float64 sum is made round-to-odd (the
    exact rounding error from TwoSum decides the last bit), which then rounds to
    float32 correctly (float64 has more than 24 + 2 bits)."""
    a64 = a.to(torch.float64)
    b64 = b.to(torch.float64) if isinstance(b, torch.Tensor) else float(b)
    c64 = c.to(torch.float64) if isinstance(c, torch.Tensor) else torch.tensor(float(c), dtype=torch.float64)
    p = a64 * b64
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    even = (s.view(torch.int64) & 1) == 0
    toward = torch.where(err > 0, float("inf"), float("-inf")).to(torch.float64)
    s = torch.where((err != 0) & even & torch.isfinite(s), torch.nextafter(s, toward), s)
    return s.to(torch.float32)


def exp_f32(d: torch.Tensor) -> torch.Tensor:
    """noise.h's exp_f32 of float32 ``d <= 0``, op for op: clamped at EXP_FLUSH (NaN kept),
    n by the round-to-nearest trick, Cody-Waite r, 1 + r Q(r) by fused multiply-adds,
    times 2^n from the bits."""
    d = torch.where(d < EXP_FLUSH, EXP_FLUSH, d)
    t = fma_f32(d, LOG2E_F32, EXP_ROUND)
    n = t - EXP_ROUND
    r = fma_f32(-n, EXP_C1, d)
    r = fma_f32(-n, EXP_C2, r)
    q = torch.full_like(r, EXP_Q[5])
    for c in reversed(EXP_Q[:5]):
        q = fma_f32(q, r, c)
    p = fma_f32(r, q, 1.0)
    scale = ((t.view(torch.int32) + (127 - 0x4B400000)) << 23).view(torch.float32)
    return p * scale


def group_sum32(e: torch.Tensor) -> torch.Tensor:
    """noise.h's group_sum32 over the last dim (32): halving folds a[k] + a[k + h]."""
    h = e.shape[-1] // 2
    while h >= 1:
        e = e[..., :h] + e[..., h:2 * h]
        h //= 2
    return e[..., 0]


def hierarchical_sample(
    x: torch.Tensor, c: float, s: float, seed: int, offset: int, rows: torch.Tensor, group0: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hierarchical Gumbel-max of noise.h on float32 logits ``x`` [R, V] whose column 0
    is the first column of global noise group ``group0``; ``rows`` [R] the noise rows.
    Returns (column of x, the winning group's key), column -1 where every key is -inf."""
    R, V = x.shape
    ng = (V + GROUP - 1) // GROUP
    w = torch.full((R, ng * GROUP), float("-inf"), dtype=torch.float32, device=x.device)
    w[:, :V] = x * c
    wg = w.view(R, ng, GROUP)
    m = wg.max(-1).values if ng else w.new_zeros(R, 0)
    empty = m == float("-inf")
    d = (wg - torch.where(empty, 0.0, m)[..., None]) * (1.0 / s)  # 1 / s: a power of two
    S = group_sum32(exp_f32(d))
    groups = torch.arange(ng, device=x.device) + group0
    G = group_gumbel(seed, offset, rows[:, None], groups[None, :])
    K = torch.where(empty, float("-inf"), m + (log_f32(torch.where(empty, 1.0, S)) + G) * s)
    if ng == 0:
        return torch.full((R,), -1, dtype=torch.int64, device=x.device), w.new_full((R,), float("-inf"))
    key, win = K.max(-1)  # the first maximal index: the lowest group on ties
    cols = win[:, None] * GROUP + torch.arange(GROUP, device=x.device)
    y = w.gather(1, cols) + gumbel_at(seed, offset, rows[:, None], cols + group0 * GROUP) * s
    col = win * GROUP + y.argmax(-1)  # argmax: the first maximal index
    return torch.where(key > float("-inf"), col, -1), key


def _mulhi_u64(lo: torch.Tensor, hi: torch.Tensor, vocab: int) -> torch.Tensor:
    """High 64 bits of ``(hi * 2**32 + lo) * vocab`` (int64 tensors holding uint32
    words, ``1 <= vocab < 2**63``), from 32-bit halves as noise.h's mulhi_u64; every
    partial sum stays below 2**63 because the result is below ``vocab``."""
    vl, vh = vocab & _MASK32, vocab >> 32
    p0h, _ = _mulhilo32(vl, lo)
    p1h, p1l = _mulhilo32(vl, hi)
    p2h, p2l = _mulhilo32(vh, lo)
    p3h, p3l = _mulhilo32(vh, hi)
    carry = (p0h + p1l + p2l) >> 32  # the middle column: below 3 * 2**32
    return (p3h << 32) + p3l + p1h + p2h + carry


def uniform_tokens(seed: int, offset: int, flat: torch.Tensor, vocab: int) -> torch.Tensor:
    """renoise_'s random tokens in [0, vocab) (int64) of the flat positions ``flat``
    (int64, any shape): noise.h's uniform_token, word for word."""
    flat = flat.to(torch.int64)
    pair = flat >> 1
    stacked = keyed_philox(seed, offset, RENOISE_STREAM | (pair & RENOISE_PAIR_MASK), pair >> 30)
    k = (flat & 1) * 2
    lo = stacked.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    hi = stacked.gather(-1, (k + 1).unsqueeze(-1)).squeeze(-1)
    return _mulhi_u64(lo, hi, vocab)
