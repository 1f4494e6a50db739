"""select_threshold (Fast-dLLM) on every backend against its reference and its definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmkernels.reference import select_threshold_reference

from selection_cases import (SCORE_DTYPES, SHAPES, brute_force_order, close_float64, same, selection_inputs,
                             special_row, strided)


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_matches_reference(backend, B, L, dtype):
    L = backend.cap(L, 400)  # the interpreter pays per operation: long rows have their own test
    scores, eligible = selection_inputs(B, L, dtype)
    exact = float(scores[0, 0].double())  # a threshold equal to a score: >= keeps it
    for threshold in (0.0, 0.5, 0.9, 2.0, exact, 0.9999, -math.inf, math.inf):
        ours = backend.call("select_threshold", scores, eligible, threshold)
        same(ours, select_threshold_reference(scores, eligible, threshold))
        assert torch.equal(ours.cpu().any(-1), eligible.any(-1))  # at least one where possible, none otherwise
        assert not (ours.cpu() & ~eligible).any()


def test_compares_in_float64_and_special_values(backend):
    scores, eligible = special_row(torch.float32)
    for threshold in (0.5000001, float(torch.tensor(0.5000001, dtype=torch.float32)), 1e-40, 0.0, -0.0):
        same(backend.call("select_threshold", scores, eligible, threshold),
             select_threshold_reference(scores, eligible, threshold))
    scores, eligible = close_float64(2, 40)
    threshold = float(scores[0].sort().values[20])
    same(backend.call("select_threshold", scores, eligible, threshold),
         select_threshold_reference(scores, eligible, threshold))
    s, e = strided(scores, eligible)
    same(backend.call("select_threshold", s, e, threshold), select_threshold_reference(scores, eligible, threshold))


def test_empty_rows_and_columns(backend):
    for B, L in ((0, 5), (3, 0)):
        out = backend.call("select_threshold", torch.rand(B, L), torch.ones(B, L, dtype=torch.bool), 0.5)
        assert out.shape == (B, L)


def test_property_definition(backend):
    @settings(max_examples=backend.examples(150), deadline=None)
    @given(
        data=st.lists(st.tuples(st.floats(0, 1, width=32), st.booleans()), min_size=1, max_size=20),
        threshold=st.floats(0, 1.2),
    )
    def check(data, threshold):
        scores = torch.tensor([[s for s, _ in data]], dtype=torch.float32)
        eligible = torch.tensor([[e for _, e in data]])
        out = backend.call("select_threshold", scores, eligible, threshold)[0].tolist()
        order = brute_force_order(scores[0].tolist(), eligible[0].tolist())
        expected = {i for i in order if float(scores[0, i]) >= threshold} | set(order[:1])  # compared in float64
        assert {i for i, v in enumerate(out) if v} == expected

    check()
