"""Reference select_threshold (Fast-dLLM): eligible positions with score >= threshold,
and always the best eligible one, so a row with eligible positions commits."""
from __future__ import annotations

import torch

from .ranking import rank_order, ranks


def select_threshold_reference(scores: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    best = ranks(rank_order(scores, eligible)) == 0
    return eligible & ((scores.to(torch.float64) >= threshold) | best)
