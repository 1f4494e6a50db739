"""select_entropy_bounded (EB-Sampler) on every backend against its reference and its definition."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmkernels.reference import select_entropy_bounded_reference
from dmkernels.reference.ranking import rank_order

from selection_cases import SCORE_DTYPES, SHAPES, brute_force_order, same, selection_inputs, special_row, strided


def eb_inputs(B, L, dtype, entropy_dtype=None):
    error, eligible = selection_inputs(B, L, dtype)
    entropy = (torch.rand(B, L, dtype=torch.float64) * 0.2).to(entropy_dtype or dtype)
    return error, entropy, eligible


def sorted_spreads(error, entropy, eligible, row):
    """The reference's float64 sum(H) - max(H) over row's ranked eligible prefix."""
    order = rank_order(-error.double(), eligible)[row]
    h = entropy.double()[row, order][: int(eligible[row].sum())]
    return torch.cumsum(h, 0) - torch.cummax(h, 0).values


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_matches_reference(backend, B, L, dtype):
    L = backend.cap(L, 250)  # the interpreter pays per operation (sorts): long rows have their own test
    entropy_dtype = SCORE_DTYPES[(SCORE_DTYPES.index(dtype) + L) % 4]  # mixed dtypes too
    for error, entropy, eligible in (eb_inputs(B, L, dtype), eb_inputs(B, L, dtype, entropy_dtype)):
        entropy[0, 0] = math.nan
        for gamma in (0.0, 0.05, 0.4, 100.0, math.inf):
            ours = backend.call("select_entropy_bounded", error, entropy, eligible, gamma)
            same(ours, select_entropy_bounded_reference(error, entropy, eligible, gamma))
            assert torch.equal(ours.cpu().any(-1), eligible.any(-1))
            assert not (ours.cpu() & ~eligible).any()


def test_error_proxy_can_be_negative_confidence(backend):
    confidence = torch.tensor([[0.9, 0.2, 0.99, 0.5]])
    entropy = torch.tensor([[0.1, 0.3, 0.05, 0.2]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    # ascending -confidence: 2, 0, 3, 1; spreads 0, 0.05, 0.15, 0.35
    out = backend.call("select_entropy_bounded", -confidence, entropy, eligible, 0.2)
    assert out.tolist() == [[True, False, True, True]]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_gamma_on_a_prefix_sum(backend, dtype):
    # gamma equal to a reference spread: parallel sums cannot decide that prefix,
    # so the Triton kernel redoes the sums in the reference's order.
    error, entropy, eligible = eb_inputs(1, 150, dtype, torch.float64)
    entropy = entropy * 3 + 1e-3
    for j in (0, 4, 17):
        gamma = float(sorted_spreads(error, entropy, eligible, 0)[j])
        expected = select_entropy_bounded_reference(error, entropy, eligible, gamma)
        same(backend.call("select_entropy_bounded", error, entropy, eligible, gamma), expected)
        assert int(expected[0].sum()) >= j + 1
        below = math.nextafter(gamma, -math.inf)  # one ulp below fails that prefix
        same(backend.call("select_entropy_bounded", error, entropy, eligible, below),
             select_entropy_bounded_reference(error, entropy, eligible, below))


def test_special_entropies_and_errors(backend):
    for dtype in SCORE_DTYPES:
        error, eligible = special_row(dtype)
        entropy = torch.tensor([[0.1, 0.0, 0.3, 0.2, 0.05, math.inf, 0.1, 0.1, 0.2, 0.1, math.nan,
                                 0.0, 0.01, 0.02, -0.0, 0.5, 0.1, 0.1, 0.1, -math.inf]], dtype=dtype)
        for gamma in (0.0, 0.2, math.inf):
            same(backend.call("select_entropy_bounded", error, entropy, eligible, gamma),
                 select_entropy_bounded_reference(error, entropy, eligible, gamma))


def test_long_rows_and_non_contiguous(backend):
    for dtype in (torch.float32, torch.float64):
        error, entropy, eligible = eb_inputs(1, 8200, dtype)
        entropy = entropy * 1e-3
        same(backend.call("select_entropy_bounded", error, entropy, eligible, 0.5),
             select_entropy_bounded_reference(error, entropy, eligible, 0.5))
    error, entropy, eligible = eb_inputs(3, 60, torch.bfloat16)
    s, e = strided(error, eligible)
    h = entropy.t().contiguous().t()  # column-major
    same(backend.call("select_entropy_bounded", s, h, e, 0.3),
         select_entropy_bounded_reference(error, entropy, eligible, 0.3))


def test_empty_rows_and_columns(backend):
    for B, L in ((0, 5), (3, 0)):
        x = torch.rand(B, L)
        assert backend.call("select_entropy_bounded", x, x, torch.ones(B, L, dtype=torch.bool), 1.0).shape == (B, L)


def test_property_definition(backend):
    @settings(max_examples=backend.examples(150), deadline=None)
    @given(
        data=st.lists(st.tuples(st.floats(0, 2, width=32), st.floats(0, 1, width=32), st.booleans()),
                      min_size=1, max_size=16),
        gamma=st.floats(0, 2),
    )
    def check(data, gamma):
        error = torch.tensor([[e for e, _, _ in data]], dtype=torch.float32)
        entropy = torch.tensor([[h for _, h, _ in data]], dtype=torch.float32)
        eligible = torch.tensor([[m for _, _, m in data]])
        out = backend.call("select_entropy_bounded", error, entropy, eligible, gamma)[0].tolist()
        order = brute_force_order((-error[0]).tolist(), eligible[0].tolist())
        n = 0
        while n < len(order):
            hs = [float(entropy[0, i]) for i in order[: n + 1]]
            if not sum(hs) - max(hs) <= gamma:
                break
            n += 1
        expected = set(order[: max(n, 1)])
        assert {i for i, v in enumerate(out) if v} == expected

    check()
