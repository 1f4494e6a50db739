"""select_topk against its reference and against a brute-force definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import select_topk_reference

from conftest import requires_extension
from selection_cases import SCORE_DTYPES, SHAPES, brute_force_order, selection_inputs

pytestmark = requires_extension


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_matches_reference(B, L, dtype):
    scores, eligible = selection_inputs(B, L, dtype)
    k = torch.randint(0, L + 3, (B,))
    ours = dmkernels.select_topk(scores, k, eligible)
    assert torch.equal(ours, select_topk_reference(scores, k, eligible))
    assert torch.equal(ours.sum(-1), torch.minimum(k, eligible.sum(-1)))
    assert not (ours & ~eligible).any()


def test_int32_k_python_int_k_and_non_contiguous_inputs():
    scores, eligible = selection_inputs(6, 50)
    big = torch.rand(50, 12)
    strided = big.t()[:, :50][:6]  # non-contiguous [6, 50]
    k = torch.tensor([0, 1, 5, 50, 2, 3], dtype=torch.int32)
    assert torch.equal(dmkernels.select_topk(strided, k, eligible), select_topk_reference(strided, k, eligible))
    assert torch.equal(dmkernels.select_topk(scores, 4, eligible), select_topk_reference(scores, torch.full((6,), 4), eligible))


def test_ties_go_to_the_lowest_index():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.9, 0.1]])
    eligible = torch.ones(1, 5, dtype=torch.bool)
    out = dmkernels.select_topk(scores, torch.tensor([2]), eligible)
    assert out.tolist() == [[False, True, True, False, False]]


def test_nan_ranks_after_every_number():
    scores = torch.tensor([[math.nan, -math.inf, 0.2, math.nan]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    assert dmkernels.select_topk(scores, torch.tensor([2]), eligible).tolist() == [[False, True, True, False]]
    assert dmkernels.select_topk(scores, torch.tensor([3]), eligible).tolist() == [[True, True, True, False]]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, -math.inf, math.nan, 0.7]), st.booleans()),
                 min_size=1, max_size=12),
        min_size=1, max_size=4,
    ),
    k_seed=st.integers(0, 2**16),
)
def test_property_exact_count_of_the_best(rows, k_seed):
    L = max(len(r) for r in rows)
    rows = [r + [(0.0, False)] * (L - len(r)) for r in rows]
    scores = torch.tensor([[s for s, _ in r] for r in rows], dtype=torch.float32)
    eligible = torch.tensor([[e for _, e in r] for r in rows])
    k = torch.randint(0, L + 2, (len(rows),), generator=torch.Generator().manual_seed(k_seed))
    out = dmkernels.select_topk(scores, k, eligible)
    for b in range(len(rows)):
        order = brute_force_order(scores[b].tolist(), eligible[b].tolist())
        expected = set(order[: int(k[b])])
        assert {i for i in range(L) if out[b, i]} == expected
