"""Shared test inputs."""
from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def random_logits(shape, dtype=torch.float32, scale=3.0):
    """Logits with LM-like spread, exactly representable in ``dtype``."""
    return (torch.randn(shape) * scale).to(dtype)


def random_eligible(B, L, p=0.6):
    return torch.rand(B, L) < p


def with_ties(scores: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Quantise scores so many of them tie."""
    return (scores * levels).round() / levels
