"""select_entropy_bounded (EB-Sampler) against its reference and its definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import select_entropy_bounded_reference

from conftest import requires_extension
from selection_cases import SCORE_DTYPES, SHAPES, brute_force_order, selection_inputs

pytestmark = requires_extension


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.1, 1.0, 100.0])
def test_matches_reference(B, L, dtype, gamma):
    error, eligible = selection_inputs(B, L, dtype)
    entropy = (torch.rand(B, L) * 0.3).to(dtype)
    entropy[0, 0] = math.nan
    ours = dmkernels.select_entropy_bounded(error, entropy, eligible, gamma)
    assert torch.equal(ours, select_entropy_bounded_reference(error, entropy, eligible, gamma))
    assert torch.equal(ours.any(-1), eligible.any(-1))
    assert not (ours & ~eligible).any()


def test_error_proxy_can_be_negative_confidence():
    confidence = torch.tensor([[0.9, 0.2, 0.99, 0.5]])
    entropy = torch.tensor([[0.1, 0.3, 0.05, 0.2]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    # ascending -confidence: 2, 0, 3, 1; spreads 0, 0.05, 0.15, 0.35
    out = dmkernels.select_entropy_bounded(-confidence, entropy, eligible, 0.2)
    assert out.tolist() == [[True, False, True, True]]


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0, 2, width=32), st.floats(0, 1, width=32), st.booleans()),
                  min_size=1, max_size=16),
    gamma=st.floats(0, 2),
)
def test_property_definition(data, gamma):
    error = torch.tensor([[e for e, _, _ in data]], dtype=torch.float32)
    entropy = torch.tensor([[h for _, h, _ in data]], dtype=torch.float32)
    eligible = torch.tensor([[m for _, _, m in data]])
    out = dmkernels.select_entropy_bounded(error, entropy, eligible, gamma)[0].tolist()
    order = brute_force_order((-error[0]).tolist(), eligible[0].tolist())
    n = 0
    while n < len(order):
        hs = [float(entropy[0, i]) for i in order[: n + 1]]
        if not sum(hs) - max(hs) <= gamma:
            break
        n += 1
    expected = set(order[: max(n, 1)])
    assert {i for i, v in enumerate(out) if v} == expected
