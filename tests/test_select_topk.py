"""select_topk on every backend against its reference and a brute-force definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmkernels.reference import select_topk_reference

from selection_cases import (SCORE_DTYPES, SHAPES, brute_force_order, close_float64, same, selection_inputs,
                             special_row, strided)


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_matches_reference(backend, B, L, dtype):
    L = backend.cap(L, 400)  # the interpreter pays per operation: long rows have their own test
    scores, eligible = selection_inputs(B, L, dtype)
    k = torch.randint(0, L + 3, (B,), dtype=torch.int32 if L % 2 else torch.int64)
    ours = backend.call("select_topk", scores, k, eligible)
    same(ours, select_topk_reference(scores, k, eligible))
    assert torch.equal(ours.cpu().sum(-1), torch.minimum(k.long(), eligible.sum(-1)))
    assert not (ours.cpu() & ~eligible).any()


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_special_values(backend, dtype):
    scores, eligible = special_row(dtype)
    k = torch.tensor([0, 1, 2, 5, 9, 13, 17, 20])
    scores, eligible = scores.expand(len(k), -1), eligible.expand(len(k), -1)  # stride 0 rows
    same(backend.call("select_topk", scores, k, eligible), select_topk_reference(scores, k, eligible))


def test_negative_k_selects_nothing(backend):
    # The one rule on every backend (no host sync reads k): k < 0 is clamped to 0.
    scores, eligible = selection_inputs(4, 30)
    k = torch.tensor([-1, 5, -(2**40), 0])
    out = backend.call("select_topk", scores, k, eligible).cpu()
    assert out[[0, 2, 3]].sum() == 0 and int(out[1].sum()) == min(5, int(eligible[1].sum()))
    same(out, select_topk_reference(scores, k, eligible))
    assert not backend.call("select_topk", scores, -3, eligible).any()  # a Python int too


def test_float64_needs_all_64_bits(backend):
    scores, eligible = close_float64(3, 90)
    k = torch.tensor([1, 40, 17])
    same(backend.call("select_topk", scores, k, eligible), select_topk_reference(scores, k, eligible))


def test_long_rows(backend):
    for dtype in (torch.float32, torch.float64):
        scores, eligible = selection_inputs(2, 8200, dtype)
        k = torch.tensor([4100, 3])
        same(backend.call("select_topk", scores, k, eligible), select_topk_reference(scores, k, eligible))


def test_int32_k_python_int_k_and_non_contiguous_inputs(backend):
    scores, eligible = selection_inputs(4, 45, torch.float32)
    s, e = strided(scores, eligible)
    k = torch.tensor([0, 0, 7, 0, 3, 0, 45, 0])[::2]  # strided k
    same(backend.call("select_topk", s, k, e), select_topk_reference(scores, k, eligible))
    k32 = torch.tensor([0, 1, 5, 50], dtype=torch.int32)
    same(backend.call("select_topk", s, k32, e), select_topk_reference(scores, k32, eligible))
    same(backend.call("select_topk", scores, 4, eligible), select_topk_reference(scores, torch.full((4,), 4), eligible))


def test_empty_rows_and_columns(backend):
    for B, L in ((0, 5), (3, 0)):
        scores, eligible = torch.rand(B, L), torch.ones(B, L, dtype=torch.bool)
        assert backend.call("select_topk", scores, torch.ones(B, dtype=torch.int64), eligible).shape == (B, L)


def test_ties_go_to_the_lowest_index(backend):
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.9, 0.1]])
    eligible = torch.ones(1, 5, dtype=torch.bool)
    out = backend.call("select_topk", scores, torch.tensor([2]), eligible)
    assert out.tolist() == [[False, True, True, False, False]]


def test_nan_ranks_after_every_number(backend):
    scores = torch.tensor([[math.nan, -math.inf, 0.2, math.nan]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    assert backend.call("select_topk", scores, torch.tensor([2]), eligible).tolist() == [[False, True, True, False]]
    assert backend.call("select_topk", scores, torch.tensor([3]), eligible).tolist() == [[True, True, True, False]]


def test_property_exact_count_of_the_best(backend):
    @settings(max_examples=backend.examples(150), deadline=None)
    @given(
        rows=st.lists(
            st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, -math.inf, math.nan, 0.7, -0.0]),
                               st.booleans()),
                     min_size=1, max_size=12),
            min_size=1, max_size=4,
        ),
        k_seed=st.integers(0, 2**16),
    )
    def check(rows, k_seed):
        L = max(len(r) for r in rows)
        rows = [r + [(0.0, False)] * (L - len(r)) for r in rows]
        scores = torch.tensor([[s for s, _ in r] for r in rows], dtype=torch.float32)
        eligible = torch.tensor([[e for _, e in r] for r in rows])
        k = torch.randint(-1, L + 2, (len(rows),), generator=torch.Generator().manual_seed(k_seed))
        out = backend.call("select_topk", scores, k, eligible).cpu()
        for b in range(len(rows)):
            order = brute_force_order(scores[b].tolist(), eligible[b].tolist())
            assert {i for i in range(L) if out[b, i]} == set(order[: max(0, int(k[b]))])

    check()
