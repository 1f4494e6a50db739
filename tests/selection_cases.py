"""Inputs shared by the selection-rule tests: random rows with ties, NaN and
-inf scores, rows with no eligible position and rows with exactly one, special
values, float64 scores that only a 64-bit key tells apart, strided views."""
from __future__ import annotations

import math

import torch

from helpers import random_eligible, with_ties

# Not powers of two; rows 2 and 3 of selection_inputs have no / one eligible position.
SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (6, 130), (8, 1024), (2, 1531)]
SCORE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def selection_inputs(B: int, L: int, dtype=torch.float32, *, specials: bool = True):
    """(scores, eligible) with the edge cases every rule must handle."""
    scores = torch.rand(B, L, dtype=torch.float64)
    if B > 1:
        scores[1] = with_ties(scores[1], 3)
    eligible = random_eligible(B, L)
    if specials and L > 3:
        scores[0, 1] = -math.inf
        scores[0, 2] = math.nan
        eligible[0, 1:3] = True
    if B > 2:
        eligible[2] = False  # no eligible position
    if B > 3:
        eligible[3] = False
        eligible[3, L // 2] = True  # exactly one
    return scores.to(dtype), eligible


def special_row(dtype):
    """Signed zeros (tied), infinities, NaN, subnormals, ties and near-ties."""
    values = [0.0, -0.0, -1.0, -math.inf, math.nan, math.inf, 1e-40, -1e-40, 0.75, 0.75, math.nan,
              0.5, 0.5000001, 0.4999999, -0.0, 1.0, 2.0, -3.5, 0.75, 0.0]
    scores = torch.tensor([values], dtype=torch.float64).to(dtype)
    eligible = torch.ones_like(scores, dtype=torch.bool)
    eligible[0, 8] = False
    return scores, eligible


def close_float64(B, L):
    """float64 scores that only a 64-bit key tells apart (equal in float32)."""
    scores = 0.5 + torch.randperm(B * L, dtype=torch.float64).reshape(B, L) * 1e-13
    scores[:, ::5] = 0.5  # and exact ties
    return scores, random_eligible(B, L, 0.8)


def strided(scores, eligible):
    """Non-contiguous views holding the same values."""
    B, L = scores.shape
    s = torch.empty(L + 3, 2 * B, dtype=scores.dtype).t()[::2, 1 : L + 1]
    s.copy_(scores)
    e = torch.zeros(B, 2 * L, dtype=torch.bool)[:, ::2]
    e.copy_(eligible)
    assert not s.is_contiguous() and not e.is_contiguous()
    return s, e


def same(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """A selection equal to the expected one: bool, same shape, contiguous."""
    assert ours.dtype == torch.bool and ours.shape == expected.shape and ours.is_contiguous()
    assert torch.equal(ours.cpu(), expected), (ours.cpu() ^ expected).nonzero().tolist()


def brute_force_order(scores_row: list[float], eligible_row: list[bool]) -> list[int]:
    """Eligible positions best first: numbers descending, then NaN, ties to lower index."""
    def key(i):
        s = scores_row[i]
        return (math.isnan(s), -s if not math.isnan(s) else 0.0, i)

    return sorted((i for i, e in enumerate(eligible_row) if e), key=key)
