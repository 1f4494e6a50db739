"""denoise_stats in Triton: ``torch.ops.dmkernels_triton.denoise_stats``
(semantics: dmkernels/reference/denoise_stats.py).

Two launches over the same rows:

1. token_stats' own kernels (dmkernels/triton/token_stats.py) with tempered
   scores, frozen rows as its ``positions``: the token and the entropy, the same
   code as token_stats and so the same bits. A 0-d temperature tensor is read
   there on the device (T_PTR), never on the host.
2. ``_divide_kernel``, one program per row, tiles of BLOCK_V columns: z = x / T
   with ``tl.math.div_rn`` (Triton's ``/`` on float32 is an approximate division
   on GPUs), rounded to the logits' dtype (to nearest even, as torch; bfloat16
   by its bits, see ``_round_to``), its
   first argmax (the first tile wins ties), and z stored to processed_out in its
   dtype. It reads the token of step 1: -1 there (frozen, or no distribution)
   makes the argmax -1, and a frozen row is not touched at all.

The confidence and margin token_stats also computes go to [rows] scratch
tensors (nothing the size of the logits is allocated).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._registry import triton_op
from .token_stats import _check_launch, _lead_layout, _launch, _on_device, _poison, _row_offset

_OP = "denoise_stats"


_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _round_to(z, KIND: tl.constexpr):
    """float32 z rounded to the dtype of ``KIND`` (0 float32, 1 bfloat16, 2 float16;
    to nearest, ties to even, as torch's ``.to``), returned as float32. bfloat16 by
    its bits: the interpreter's own float32 -> bfloat16 cast truncates, so the
    cast is only applied to exact values."""
    if KIND == 1:
        bits = z.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # carries into the exponent: inf past max
        return tl.where(z != z, z, bits.to(tl.float32, bitcast=True))
    elif KIND == 2:
        return z.to(tl.float16).to(tl.float32)
    else:
        return z


@triton.jit
def _divide_kernel(
    x_ptr, out_ptr, tok_ptr, am_ptr, frozen_ptr, temp_ptr, x_rowoff_ptr, o_rowoff_ptr,
    V, t_value, xs1, xs2, xs3, xst0, xst1, xst2, xst3, os1, os2, os3, ost0, ost1, ost2, ost3,
    HAS_OUT: tl.constexpr, HAS_FROZEN: tl.constexpr, T_PTR: tl.constexpr, X_ROWOFF: tl.constexpr,
    O_ROWOFF: tl.constexpr, X_KIND: tl.constexpr, O_KIND: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if T_PTR:
        t = tl.load(temp_ptr)
    else:
        t = t_value
    token = tl.load(tok_ptr + row)
    if HAS_FROZEN:
        live = tl.load(frozen_ptr + row).to(tl.int32) == 0
    else:
        live = row >= 0
    # A row without a distribution still gets its processed_out row; one without
    # processed_out needs no sweep then.
    if HAS_OUT:
        sweep = live
    else:
        sweep = live & (token >= 0)
    n_tiles = tl.where(sweep, tl.cdiv(V, BLOCK_V), 0)
    xrow = x_ptr + _row_offset(row, x_rowoff_ptr, xs1, xs2, xs3, xst0, xst1, xst2, xst3, X_ROWOFF)
    if HAS_OUT:
        orow = out_ptr + _row_offset(row, o_rowoff_ptr, os1, os2, os3, ost0, ost1, ost2, ost3, O_ROWOFF)
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((), float("-inf"), tl.float32)
    best_col = tl.zeros((), tl.int64)  # stays 0 for a row of -inf quotients (torch.argmax)
    for i in range(n_tiles):
        cols = i * BLOCK_V + offs
        inside = cols < V
        x = tl.load(xrow + cols, mask=inside, other=float("-inf"))
        z = tl.math.div_rn(x.to(tl.float32), t)
        z = _round_to(z, X_KIND)  # torch's `logits / T` is in the logits' dtype
        if HAS_OUT:
            tl.store(orow + cols, _round_to(z, O_KIND).to(out_ptr.dtype.element_ty), mask=inside)
        tmax, tidx = tl.max(z, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = tmax > best  # strict: earlier tiles win ties
        best_col = tl.where(better, i * BLOCK_V + tidx, best_col)
        best = tl.where(better, tmax, best)
    tl.store(am_ptr + row, tl.where(token >= 0, best_col, -1))


def _layout(t: torch.Tensor, placeholder: torch.Tensor):
    """(row-offset table or placeholder, uses the table, 3 sizes + 4 strides) of t's leading dims."""
    sizes, strides = _lead_layout(t)
    if len(sizes) > 4:  # more than 4 leading dims that do not coalesce: a [rows] table
        rowoff = torch.zeros((), dtype=torch.int64, device=t.device)
        for size, stride in zip(sizes, strides):
            rowoff = rowoff.unsqueeze(-1) + torch.arange(size, device=t.device) * stride
        return rowoff.reshape(-1), True, (1, 1, 1, 0, 0, 0, 0)
    sizes = [1] * (4 - len(sizes)) + sizes
    strides = [0] * (4 - len(strides)) + strides
    return placeholder, False, (sizes[1], sizes[2], sizes[3], *strides)


@triton_op("denoise_stats")
def denoise_stats(
    logits: torch.Tensor,
    temperature: float,
    temperature_tensor: Optional[torch.Tensor],
    seed: int,
    offset: int,
    rng: Optional[torch.Tensor],
    processed_out: Optional[torch.Tensor],
    frozen: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See dmkernels.denoise_stats."""
    _check_launch(_OP, logits)
    lead = logits.shape[:-1]
    V = logits.shape[-1]
    rows = logits.numel() // V
    dev = logits.device
    token = torch.empty(lead, dtype=torch.int64, device=dev)
    argmax = torch.empty(lead, dtype=torch.int64, device=dev)
    entropy = torch.empty(lead, dtype=torch.float32, device=dev)
    if _poison():
        token.fill_(-7)
        argmax.fill_(-7)
        entropy.fill_(12345.0)
    if rows == 0:
        return token, argmax, entropy
    rng = rng.contiguous() if rng is not None else None
    frozen_flat = frozen.reshape(-1).contiguous() if frozen is not None else None  # [rows] bools
    positions = ~frozen if frozen is not None else None
    conf = torch.empty(lead, dtype=torch.float32, device=dev)  # token_stats' other scores: unused
    margin = torch.empty(lead, dtype=torch.float32, device=dev)
    _launch(logits, temperature, seed, offset, True, positions, rng, (token, conf, margin, entropy),
            temperature_tensor=temperature_tensor)

    placeholder = token
    x_rowoff, x_table, x_layout = _layout(logits, placeholder)
    if processed_out is not None:
        o_rowoff, o_table, o_layout = _layout(processed_out, placeholder)
    else:
        o_rowoff, o_table, o_layout = placeholder, False, (1, 1, 1, 0, 0, 0, 0)
    t32 = float(torch.tensor(temperature, dtype=torch.float32))  # T rounded to float32, as torch divides
    block_max = 4096 if dev.type == "cuda" else 1024
    BLOCK_V = max(16, min(block_max, triton.next_power_of_2(V)))
    with _on_device(dev):
        _divide_kernel[(rows,)](
            logits, processed_out if processed_out is not None else logits, token, argmax,
            frozen_flat if frozen_flat is not None else placeholder,
            temperature_tensor if temperature_tensor is not None else placeholder, x_rowoff, o_rowoff,
            V, t32, *x_layout, *o_layout,
            HAS_OUT=processed_out is not None, HAS_FROZEN=frozen is not None,
            T_PTR=temperature_tensor is not None, X_ROWOFF=x_table, O_ROWOFF=o_table, X_KIND=_KIND[logits.dtype],
            O_KIND=_KIND[processed_out.dtype] if processed_out is not None else 0, BLOCK_V=BLOCK_V,
            num_warps=8 if BLOCK_V >= 4096 else 4,
        )
    return token, argmax, entropy
