"""select_threshold (Fast-dLLM) against its reference and its definition."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import select_threshold_reference

from conftest import requires_extension
from selection_cases import SCORE_DTYPES, SHAPES, brute_force_order, selection_inputs

pytestmark = requires_extension


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 2.0])
def test_matches_reference(B, L, dtype, threshold):
    scores, eligible = selection_inputs(B, L, dtype)
    ours = dmkernels.select_threshold(scores, eligible, threshold)
    assert torch.equal(ours, select_threshold_reference(scores, eligible, threshold))
    has_eligible = eligible.any(-1)
    assert torch.equal(ours.any(-1), has_eligible)  # at least one where possible, none otherwise
    assert not (ours & ~eligible).any()


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0, 1, width=32), st.booleans()), min_size=1, max_size=20),
    threshold=st.floats(0, 1.2),
)
def test_property_definition(data, threshold):
    scores = torch.tensor([[s for s, _ in data]], dtype=torch.float32)
    eligible = torch.tensor([[e for _, e in data]])
    out = dmkernels.select_threshold(scores, eligible, threshold)[0].tolist()
    order = brute_force_order(scores[0].tolist(), eligible[0].tolist())
    expected = {i for i in order if float(scores[0, i]) >= threshold} | set(order[:1])  # compared in float64
    assert {i for i, v in enumerate(out) if v} == expected
