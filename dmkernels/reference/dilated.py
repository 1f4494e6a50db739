"""Dilated unmasking (DUS): group index per block offset, and the reference select_group.

``dilated_groups(B, a)`` assigns offset o of a block of length B to the first
stride in B // a, B // a**2, ..., 1 that divides it. Group 0 is the coarsest
(offsets far apart, nearly independent), the last group is stride 1. A block
therefore takes about log_a(B) steps, one group per step.
"""
from __future__ import annotations

import torch


def dilated_strides(block_length: int, base: int = 2) -> list[int]:
    """Strides of the groups, coarse to fine, ending with 1."""
    strides: list[int] = []
    s = block_length
    while True:
        s //= base
        if s <= 1:
            break
        strides.append(s)
    return strides + [1]


def dilated_groups_reference(block_length: int, base: int = 2, device=None) -> torch.Tensor:
    offsets = torch.arange(block_length, dtype=torch.int64, device=device)
    groups = torch.full_like(offsets, -1)
    for g, stride in enumerate(dilated_strides(block_length, base)):
        groups = torch.where((groups < 0) & (offsets % stride == 0), g, groups)
    return groups


def select_group_reference(eligible: torch.Tensor, groups: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Eligible positions with group <= step, or with the first group that still has one."""
    if eligible.shape[-1] == 0:  # no positions (min over an empty row is an error)
        return eligible.clone()
    groups = groups.to(torch.int64).expand_as(eligible)
    step = step.to(torch.int64).reshape(-1, 1).expand(eligible.shape[0], 1)
    big = torch.iinfo(torch.int64).max
    first = torch.where(eligible, groups, big).min(-1, keepdim=True).values
    return eligible & (groups <= torch.maximum(step, first))
