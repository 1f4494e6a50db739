"""Triton kernel for renoise_: keep accepted samples, draw a uniform token
everywhere else, leave frozen rows alone (csrc/common/noise.h, "Re-noising").

One program per row. Position (b, l) has the flat index f = b * L + l; its Philox
call is block ``pair = f // 2`` of the renoise stream (counter word 0 =
0x40000000 | (pair & 0x3FFFFFFF), word 1 = pair >> 30), its 64 bits are words
2 * (f % 2) and 2 * (f % 2) + 1, and its token the high 64 bits of bits * V,
computed from 32-bit halves in uint64 (no partial sum wraps), exactly as the
header's mulhi_u64. Integer operations only, so every backend gets the same tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._registry import triton_op
from .noise import philox4x32_10, seed_words, split_u64
from .select import block_size, num_warps, on_device, poison_outputs

__all__ = ["renoise_"]

RENOISE_STREAM: tl.constexpr = tl.constexpr(0x40000000)
RENOISE_PAIR_MASK: tl.constexpr = tl.constexpr(0x3FFFFFFF)


@triton.jit
def mulhi_u64(a, b):
    """High 64 bits of a * b for uint64 a, b: noise.h's mulhi_u64."""
    al = a & 0xFFFFFFFF
    ah = a >> 32
    bl = b & 0xFFFFFFFF
    bh = b >> 32
    t = al * bl
    w1 = ah * bl + (t >> 32)
    w2 = al * bh + (w1 & 0xFFFFFFFF)
    return ah * bh + (w1 >> 32) + (w2 >> 32)


@triton.jit
def uniform_token(flat, vocab, seed_lo, seed_hi, offset_lo, offset_hi):
    """renoise_'s token (int64 in [0, vocab)) of flat positions ``flat`` (int64 tensor)."""
    pair = flat >> 1
    c0 = ((pair & RENOISE_PAIR_MASK) | RENOISE_STREAM).to(tl.uint32)
    c1 = (pair >> 30).to(tl.uint32)
    c2 = tl.zeros_like(c0) + offset_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + offset_hi.to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    odd = (flat & 1) == 1
    lo = tl.where(odd, w2, w0).to(tl.uint64)
    hi = tl.where(odd, w3, w1).to(tl.uint64)
    return mulhi_u64(lo | (hi << 32), vocab).to(tl.int64)


@triton.jit(do_not_specialize=["vocab_lo", "vocab_hi", "seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def _renoise_kernel(
    canvas_ptr, sample_ptr, accept_ptr, frozen_ptr, rng_ptr, noised_ptr, L,
    vocab_lo, vocab_hi, seed_lo, seed_hi, offset_lo, offset_hi,
    c_s0, c_s1, s_s0, s_s1, a_s0, a_s1, f_s0,
    BLOCK_L: tl.constexpr, HAS_FROZEN: tl.constexpr, HAS_RNG: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    live = True
    if HAS_FROZEN:
        live = tl.load(frozen_ptr + row * f_s0) == 0
    if live:
        seed_lo, seed_hi, offset_lo, offset_hi = seed_words(rng_ptr, seed_lo, seed_hi, offset_lo, offset_hi, HAS_RNG)
        vocab = vocab_lo.to(tl.uint64) | (vocab_hi.to(tl.uint64) << 32)
        cols = tl.arange(0, BLOCK_L).to(tl.int64)
        inside = cols < L
        accept = tl.load(accept_ptr + row * a_s0 + cols * a_s1, mask=inside, other=0) != 0
        sample = tl.load(sample_ptr + row * s_s0 + cols * s_s1, mask=inside, other=0).to(tl.int64)
        noise = uniform_token(row * L + cols, vocab, seed_lo, seed_hi, offset_lo, offset_hi)
        new = tl.where(accept, sample, noise)
        at = canvas_ptr + row * c_s0 + cols * c_s1
        tl.store(at, new.to(canvas_ptr.dtype.element_ty), mask=inside)
        tl.store(noised_ptr + row, tl.sum((inside & ~accept).to(tl.int64), axis=0))
    else:
        tl.store(noised_ptr + row, 0)


@triton_op("renoise_")
def renoise_(
    canvas: torch.Tensor,
    sample: torch.Tensor,
    accept: torch.Tensor,
    frozen: Optional[torch.Tensor],
    vocab_size: int,
    seed: int,
    offset: int,
    rng: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """See dmkernels.renoise_; returns the random tokens written per row (int64 [B])."""
    B, L = canvas.shape
    noised = torch.empty((B,), dtype=torch.int64, device=canvas.device)
    if poison_outputs():
        noised.fill_(-7)
    if L == 0:
        noised.zero_()
    elif B:
        block = block_size(L)
        vocab_lo, vocab_hi = split_u64(vocab_size)
        seed_lo, seed_hi = split_u64(seed)
        offset_lo, offset_hi = split_u64(offset)
        rng = rng.contiguous() if rng is not None else None  # 2 elements
        placeholder = noised  # any tensor where an optional input is absent (never read)
        with on_device(canvas):
            _renoise_kernel[(B,)](
                canvas, sample, accept, frozen if frozen is not None else placeholder,
                rng if rng is not None else placeholder, noised, L,
                vocab_lo, vocab_hi, seed_lo, seed_hi, offset_lo, offset_hi,
                *canvas.stride(), *sample.stride(), *accept.stride(), frozen.stride(0) if frozen is not None else 0,
                BLOCK_L=block, HAS_FROZEN=frozen is not None, HAS_RNG=rng is not None, num_warps=num_warps(block),
            )
    return noised
