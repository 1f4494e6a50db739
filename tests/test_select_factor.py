"""select_factor (Fast-dLLM) on every backend against its reference and its definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmkernels.reference import select_factor_reference

from helpers import with_ties
from selection_cases import (SCORE_DTYPES, SHAPES, brute_force_order, close_float64, same, selection_inputs,
                             special_row, strided)


def confident_inputs(B, L, dtype):
    """Scores near 1 (so prefixes run long), with ties, NaN and -inf."""
    _, eligible = selection_inputs(B, L)
    scores = 1.0 - with_ties(torch.rand(B, L, dtype=torch.float64), 50) ** 2 * 0.2
    if L > 3:
        scores[0, 1], scores[0, 2] = -math.inf, math.nan
    return scores.to(dtype), eligible


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_matches_reference(backend, B, L, dtype):
    L = backend.cap(L, 250)  # the interpreter pays per operation (sorts): long rows have their own test
    scores, eligible = selection_inputs(B, L, dtype)
    near_one = 1 - (1 - scores) * 0.05  # confidences near 1, where the rule takes several
    for inputs in ((near_one, eligible), confident_inputs(B, L, dtype)):
        for factor in (0.0, 0.5, 1.0, 4.0):
            ours = backend.call("select_factor", *inputs, factor)
            same(ours, select_factor_reference(*inputs, factor))
            assert torch.equal(ours.cpu().any(-1), inputs[1].any(-1))
            assert not (ours.cpu() & ~inputs[1]).any()


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_special_values(backend, dtype):
    scores, eligible = special_row(dtype)  # scores above 1 make (n + 1) * (1 - c) negative
    for factor in (0.0, 1.0, 40.0, math.inf, -math.inf):
        same(backend.call("select_factor", scores, eligible, factor), select_factor_reference(scores, eligible, factor))


def test_float64_long_row_and_non_contiguous(backend):
    scores, eligible = close_float64(2, 70)
    same(backend.call("select_factor", scores, eligible, 60.0), select_factor_reference(scores, eligible, 60.0))
    s, e = strided(*confident_inputs(3, 50, torch.float32))
    same(backend.call("select_factor", s, e, 1.5), select_factor_reference(s, e, 1.5))
    scores, eligible = confident_inputs(1, 8200, torch.float32)
    scores = 1.0 - (1.0 - scores) * 1e-3  # long prefixes
    same(backend.call("select_factor", scores, eligible, 1.0), select_factor_reference(scores, eligible, 1.0))


def test_empty_rows_and_columns(backend):
    for B, L in ((0, 5), (3, 0)):
        out = backend.call("select_factor", torch.rand(B, L), torch.ones(B, L, dtype=torch.bool), 1.0)
        assert out.shape == (B, L)


def test_property_definition(backend):
    @settings(max_examples=backend.examples(200), deadline=None)
    @given(
        data=st.lists(st.tuples(st.floats(0.5, 1, width=32), st.booleans()), min_size=1, max_size=20),
        factor=st.floats(0, 3),
    )
    def check(data, factor):
        scores = torch.tensor([[s for s, _ in data]], dtype=torch.float32)
        eligible = torch.tensor([[e for _, e in data]])
        out = backend.call("select_factor", scores, eligible, factor)[0].tolist()
        order = brute_force_order(scores[0].tolist(), eligible[0].tolist())
        n = 0
        while n < len(order) and (n + 2) * (1 - float(scores[0, order[n]])) <= factor:
            n += 1
        expected = set(order[: max(n, 1)])
        assert {i for i, v in enumerate(out) if v} == expected

    check()
