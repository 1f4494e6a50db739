"""Triton kernel for edit_: rewrite editable positions of the canvas ``x`` whose
proposed token is real (>= 0), differs from the one there, and has a confidence
strictly above the threshold.

One program per row, branch-free: a predicated store of exactly the positions
that change. The threshold is rounded to the confidence's dtype on the host
(:func:`threshold_in_dtype`), so comparing the widened confidence with it in
float64 is PyTorch's ``confidence > threshold`` for a Python float; NaN never
passes. ``edits`` counts the changed positions per row.
"""
from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from .._registry import triton_op
from .select import _float_arg, _float_bits, _widen, block_size, num_warps, on_device, poison_outputs

__all__ = ["edit_"]


_F32_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
_F32_ROUNDS_TO_INF = float.fromhex("0x1.ffffffp127")  # FLT_MAX + half an ulp: ties go to the even 2**128


def _to_float32(value: float) -> float:
    """IEEE round to nearest even (struct refuses values beyond float32's range)."""
    if abs(value) > _F32_MAX:
        return math.copysign(math.inf if abs(value) >= _F32_ROUNDS_TO_INF else _F32_MAX, value)
    return struct.unpack("<f", struct.pack("<f", value))[0]


def threshold_in_dtype(threshold: float, dtype: torch.dtype) -> float:
    """The threshold as PyTorch converts a Python float for a comparison with a
    ``dtype`` tensor (its copy kernel: float16 and bfloat16 through float32).
    Plain Python arithmetic: no tensor, so nothing a sync guard would see."""
    if dtype == torch.float64:
        return threshold
    f = _to_float32(threshold)
    if dtype == torch.float16:
        if math.isinf(f) or abs(f) >= 65520.0:  # 65504 + half an ulp and beyond round to inf
            return math.copysign(math.inf, f)
        return struct.unpack("<e", struct.pack("<e", f))[0]
    if dtype == torch.bfloat16:
        bits = struct.unpack("<I", struct.pack("<f", f))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even on the top 16 bits
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    return f


@triton.jit(do_not_specialize=["thr_bits"])
def _edit_kernel(
    x_ptr, token_ptr, conf_ptr, editable_ptr, changed_ptr, edits_ptr, thr_bits, L,
    x_s0, x_s1, t_s0, t_s1, c_s0, c_s1, e_s0, e_s1,
    BLOCK_L: tl.constexpr, WIDE64: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    offs = cols.to(tl.int64)
    x_at = x_ptr + row * x_s0 + offs * x_s1
    current = tl.load(x_at, mask=inside, other=0)
    token = tl.load(token_ptr + row * t_s0 + offs * t_s1, mask=inside, other=-1).to(tl.int64)
    conf = tl.load(conf_ptr + row * c_s0 + offs * c_s1, mask=inside, other=0.0)
    editable = tl.load(editable_ptr + row * e_s0 + offs * e_s1, mask=inside, other=False)
    confident = _widen(conf, WIDE64).to(tl.float64) > _float_arg(thr_bits)
    write = inside & editable & confident & (token >= 0) & (token != current.to(tl.int64))
    tl.store(x_at, token.to(current.dtype), mask=write)  # x's dtype, as the reference's token.to(x.dtype)
    tl.store(changed_ptr + row * L + cols, write, mask=inside)
    tl.store(edits_ptr + row, tl.sum(write.to(tl.int64), axis=0))


@triton_op("edit_")
def edit_(
    x: torch.Tensor, token: torch.Tensor, confidence: torch.Tensor, editable: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write token where editable, different, real and confidence > threshold; returns (changed, edits)."""
    B, L = x.shape
    changed = torch.empty((B, L), dtype=torch.bool, device=x.device)
    edits = torch.empty((B,), dtype=torch.int64, device=x.device)
    if poison_outputs():
        changed.fill_(True)
        edits.fill_(-7)
    if L == 0:
        edits.zero_()
    elif B:
        block = block_size(L)
        thr = threshold_in_dtype(threshold, confidence.dtype)
        with on_device(x):
            _edit_kernel[(B,)](
                x, token, confidence, editable, changed, edits, _float_bits(thr), L,
                *x.stride(), *token.stride(), *confidence.stride(), *editable.stride(),
                BLOCK_L=block, WIDE64=confidence.dtype == torch.float64, num_warps=num_warps(block),
            )
    return changed, edits
