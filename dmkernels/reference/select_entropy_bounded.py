"""Reference select_entropy_bounded (EB-Sampler): eligible positions in ascending
error order; the longest prefix whose entropies satisfy sum(H) - max(H) <= gamma;
at least one where a row has an eligible position. Sums in float64, in order."""
from __future__ import annotations

import torch

from .ranking import prefix_length, rank_order, take_best


def select_entropy_bounded_reference(
    error: torch.Tensor, entropy: torch.Tensor, eligible: torch.Tensor, gamma: float
) -> torch.Tensor:
    order = rank_order(-error.to(torch.float64), eligible)
    h = entropy.to(torch.float64).gather(-1, order)
    spread = torch.cumsum(h, -1) - torch.cummax(h, -1).values
    passes = (spread <= gamma) & eligible.gather(-1, order)
    count = torch.maximum(prefix_length(passes), (eligible.sum(-1) > 0).to(torch.int64))
    return take_best(order, count)
