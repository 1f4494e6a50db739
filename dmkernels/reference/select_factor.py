"""Reference select_factor (Fast-dLLM): with eligible scores sorted c_1 >= c_2 >= ...,
the longest prefix of n positions whose every member has (n + 1) * (1 - c_n) <= factor;
at least one where a row has an eligible position. Arithmetic in float64."""
from __future__ import annotations

import torch

from .ranking import prefix_length, rank_order, take_best


def select_factor_reference(scores: torch.Tensor, eligible: torch.Tensor, factor: float) -> torch.Tensor:
    order = rank_order(scores, eligible)
    c = scores.to(torch.float64).gather(-1, order)
    n = torch.arange(1, c.shape[-1] + 1, dtype=torch.float64, device=c.device)
    passes = ((n + 1) * (1.0 - c) <= factor) & eligible.gather(-1, order)
    count = prefix_length(passes)
    count = torch.maximum(count, (eligible.sum(-1) > 0).to(torch.int64))
    return take_best(order, count)
