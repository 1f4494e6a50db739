"""Inputs shared by the selection-rule tests: random rows with ties, NaN and
-inf scores, rows with no eligible position and rows with exactly one."""
from __future__ import annotations

import math

import torch

from helpers import random_eligible, with_ties

SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (8, 1024), (2, 1531)]
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


def brute_force_order(scores_row: list[float], eligible_row: list[bool]) -> list[int]:
    """Eligible positions best first: numbers descending, then NaN, ties to lower index."""
    def key(i):
        s = scores_row[i]
        return (math.isnan(s), -s if not math.isnan(s) else 0.0, i)

    return sorted((i for i, e in enumerate(eligible_row) if e), key=key)
