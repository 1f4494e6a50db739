"""Triton kernel for commit_: write ``token`` into the canvas ``x`` where
selected, still masked and a real token (>= 0 and not mask_id).

One program per row, branch-free: the write is a predicated store of exactly
the positions that change, so a committed position is never written (not even
with its own value). ``changed`` marks those positions; ``remaining`` counts
the masks left in the row after the write.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registry import triton_op
from .select import block_size, num_warps, on_device, poison_outputs

__all__ = ["commit_"]


@triton.jit(do_not_specialize=["mask_id"])
def _commit_kernel(
    x_ptr, token_ptr, select_ptr, changed_ptr, remaining_ptr, mask_id, L,
    x_s0, x_s1, t_s0, t_s1, s_s0, s_s1,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_L)
    inside = cols < L
    offs = cols.to(tl.int64)
    x_at = x_ptr + row * x_s0 + offs * x_s1
    current = tl.load(x_at, mask=inside, other=0)
    token = tl.load(token_ptr + row * t_s0 + offs * t_s1, mask=inside, other=-1).to(tl.int64)
    chosen = tl.load(select_ptr + row * s_s0 + offs * s_s1, mask=inside, other=False)
    mask = mask_id.to(tl.int64)
    write = inside & chosen & (current.to(tl.int64) == mask) & (token >= 0) & (token != mask)
    written = token.to(current.dtype)  # x's dtype, as the reference's token.to(x.dtype)
    tl.store(x_at, written, mask=write)
    tl.store(changed_ptr + row * L + cols, write, mask=inside)
    now = tl.where(write, written, current).to(tl.int64)
    left = tl.sum((inside & (now == mask)).to(tl.int64), axis=0)
    tl.store(remaining_ptr + row, left)


@triton_op("commit_")
def commit_(
    x: torch.Tensor, token: torch.Tensor, select: torch.Tensor, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write token where select and x == mask_id; returns (changed, remaining)."""
    B, L = x.shape
    changed = torch.empty((B, L), dtype=torch.bool, device=x.device)
    remaining = torch.empty((B,), dtype=torch.int64, device=x.device)
    if poison_outputs():
        changed.fill_(True)
        remaining.fill_(-7)
    if L == 0:
        remaining.zero_()
    elif B:
        block = block_size(L)
        with on_device(x):
            _commit_kernel[(B,)](
                x, token, select, changed, remaining, mask_id, L,
                *x.stride(), *token.stride(), *select.stride(),
                BLOCK_L=block, num_warps=num_warps(block),
            )
    return changed, remaining

