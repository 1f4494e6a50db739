"""Reference edit_: rewrite editable positions whose proposed token differs and is confident.

Token editing (LLaDA2.1, diffusers' BlockRefinementScheduler): a position that
already holds a token is rewritten when the model now proposes another token
with a probability above a threshold. ``confidence > threshold`` is PyTorch's
comparison with a Python float, i.e. in the confidence's dtype (the threshold
rounded to it), which is what the public samplers evaluate on their float32
probabilities; ties at the threshold never edit, nor does a NaN confidence.
"""
from __future__ import annotations

import torch


def edit_reference(
    x: torch.Tensor, token: torch.Tensor, confidence: torch.Tensor, editable: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # token != x compares in int64 (the promoted dtype); token < 0 is "no token".
    changed = (editable & (token != x) & (confidence > threshold) & (token >= 0)).contiguous()
    x.copy_(torch.where(changed, token.to(x.dtype), x))
    return changed, changed.sum(-1)
