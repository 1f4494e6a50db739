"""Reference select_topk: the clamp(k[b], 0, #eligible) best eligible positions per
row (a negative k selects nothing, on every backend)."""
from __future__ import annotations

import torch

from .ranking import rank_order, take_best


def select_topk_reference(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    count = torch.minimum(k.to(torch.int64).clamp_min(0), eligible.sum(-1))
    return take_best(rank_order(scores, eligible), count)
