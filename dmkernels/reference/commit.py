"""Reference commit_: write ``token`` into ``x`` where selected, still masked and a real token."""
from __future__ import annotations

import torch


def commit_reference(
    x: torch.Tensor, token: torch.Tensor, select: torch.Tensor, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    changed = select & (x == mask_id) & (token >= 0) & (token != mask_id)
    x.copy_(torch.where(changed, token.to(x.dtype), x))
    return changed, (x == mask_id).sum(-1)
