"""select_factor (Fast-dLLM) against its reference and its definition."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import select_factor_reference

from conftest import requires_extension
from selection_cases import SCORE_DTYPES, SHAPES, brute_force_order, selection_inputs

pytestmark = requires_extension


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 4.0])
def test_matches_reference(B, L, dtype, factor):
    scores, eligible = selection_inputs(B, L, dtype)
    scores = 1 - (1 - scores) * 0.05  # confidences near 1, where the rule takes several
    ours = dmkernels.select_factor(scores, eligible, factor)
    assert torch.equal(ours, select_factor_reference(scores, eligible, factor))
    assert torch.equal(ours.any(-1), eligible.any(-1))
    assert not (ours & ~eligible).any()


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0.5, 1, width=32), st.booleans()), min_size=1, max_size=20),
    factor=st.floats(0, 3),
)
def test_property_definition(data, factor):
    scores = torch.tensor([[s for s, _ in data]], dtype=torch.float32)
    eligible = torch.tensor([[e for _, e in data]])
    out = dmkernels.select_factor(scores, eligible, factor)[0].tolist()
    order = brute_force_order(scores[0].tolist(), eligible[0].tolist())
    n = 0
    while n < len(order) and (n + 2) * (1 - float(scores[0, order[n]])) <= factor:
        n += 1
    expected = set(order[: max(n, 1)])
    assert {i for i, v in enumerate(out) if v} == expected
