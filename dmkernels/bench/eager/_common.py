"""Pieces the eager samplers share: LLaDA's per-step counts, its float64
Gumbel-max sampling, and an explicit ranking of one row's positions."""
from __future__ import annotations

import torch


def linear_counts(block_masks: torch.Tensor, steps: int) -> torch.Tensor:
    """How many positions each step of a block commits, per row: the ``n`` masked
    positions of the block split as evenly as possible over ``steps``, the first
    ``n % steps`` steps taking one more. int64 ``[B, steps]``."""
    n = block_masks.sum(dim=1)
    counts = torch.zeros(block_masks.shape[0], steps, dtype=torch.int64, device=block_masks.device)
    for row in range(block_masks.shape[0]):
        total = int(n[row])
        for step in range(steps):
            counts[row, step] = total // steps + (1 if step < total % steps else 0)
    return counts


def gumbel_argmax_float64(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The token LLaDA picks: the argmax at temperature 0; otherwise the argmax of
    ``exp(l) / (-log u) ** T`` computed in float64 with ``u ~ U[0, 1)`` drawn from
    torch's generator, i.e. ``argmax(l / T + g)`` with Gumbel noise ``g`` (a
    sample from ``softmax(l / T)``)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    wide = logits.to(torch.float64)
    u = torch.rand(wide.shape, dtype=torch.float64, device=wide.device)
    return torch.argmax(wide.exp() / (-torch.log(u)) ** temperature, dim=-1)


def ranked(scores: torch.Tensor, eligible: torch.Tensor, *, descending: bool = True) -> list[int]:
    """Positions of one row where ``eligible`` holds, best score first (highest when
    ``descending``, lowest otherwise); equal scores in increasing position order."""
    positions = torch.arange(scores.shape[0], device=scores.device)[eligible]
    order = torch.sort(scores[eligible], descending=descending, stable=True).indices
    return [int(p) for p in positions[order]]
