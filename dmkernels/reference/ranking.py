"""The ranking every selection rule shares, in torch ops.

Within a row: eligible positions with a number first, highest score first;
then eligible positions whose score is NaN; then ineligible positions. Ties go
to the lower position. Built from stable sorts, least significant key first.
"""
from __future__ import annotations

import torch


def rank_order(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Permutation [B, L] listing each row's positions best first."""
    s = scores.to(torch.float64)
    nan = torch.isnan(s)
    by_score = torch.argsort(-torch.where(nan, 0.0, s), dim=-1, stable=True)
    group = torch.where(~eligible, 2, torch.where(nan, 1, 0))
    by_group = torch.argsort(group.gather(-1, by_score), dim=-1, stable=True)
    return by_score.gather(-1, by_group)


def ranks(order: torch.Tensor) -> torch.Tensor:
    """Inverse of ``order``: the rank [B, L] of every position (0 = best)."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def take_best(order: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: the first ``count[b]`` positions of each row's order."""
    return ranks(order) < count.unsqueeze(-1)


def prefix_length(passes: torch.Tensor) -> torch.Tensor:
    """Length [B] of the leading run of True in each row of ``passes``."""
    return torch.cumprod(passes.to(torch.int64), dim=-1).sum(-1)
