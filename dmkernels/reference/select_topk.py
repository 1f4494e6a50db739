"""Reference select_topk: the min(k[b], #eligible) best eligible positions per row."""
from __future__ import annotations

import torch

from .ranking import rank_order, take_best


def select_topk_reference(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    count = torch.minimum(k.to(torch.int64), eligible.sum(-1))
    return take_best(rank_order(scores, eligible), count)
