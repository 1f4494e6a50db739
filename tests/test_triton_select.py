"""Triton selection kernels (torch.ops.dmkernels_triton.*) against the references.

Without a GPU they run under the Triton interpreter on CPU tensors; shapes stay
small (the interpreter pays per operation and per row) and not powers of two.
"""
from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dmkernels  # noqa: E402
from dmkernels.reference import (  # noqa: E402
    select_entropy_bounded_reference,
    select_factor_reference,
    select_group_reference,
    select_threshold_reference,
    select_topk_reference,
)
from dmkernels.reference.ranking import rank_order  # noqa: E402
from dmkernels.triton import select as triton_select  # noqa: E402  (registers the ops)

from helpers import random_eligible, with_ties  # noqa: E402
from selection_cases import SCORE_DTYPES, brute_force_order, selection_inputs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside the interpreter

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
ops = torch.ops.dmkernels_triton

# Not powers of two; rows 2 and 3 of selection_inputs have no / one eligible position.
SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (6, 130), (2, 300)]


def on(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def same(ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert ours.dtype == torch.bool and ours.shape == expected.shape and ours.is_contiguous()
    assert torch.equal(ours.cpu(), expected), (ours.cpu() ^ expected).nonzero().tolist()


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


# --------------------------------------------------------------------------- select_topk


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_topk_matches_reference(B, L, dtype):
    scores, eligible = selection_inputs(B, L, dtype)
    k = torch.randint(0, L + 3, (B,), dtype=torch.int32 if L % 2 else torch.int64)
    out = ops.select_topk(*on(scores, k, eligible))
    expected = select_topk_reference(scores, k, eligible)
    same(out, expected)
    assert torch.equal(out.cpu().sum(-1), torch.minimum(k.long(), eligible.sum(-1)))


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_topk_special_values(dtype):
    scores, eligible = special_row(dtype)
    k = torch.tensor([0, 1, 2, 5, 9, 13, 17, 20])
    scores, eligible = scores.expand(len(k), -1), eligible.expand(len(k), -1)  # stride 0 rows
    same(ops.select_topk(*on(scores, k, eligible)), select_topk_reference(scores, k, eligible))


def test_topk_float64_needs_all_64_bits_and_negative_k_selects_none():
    scores, eligible = close_float64(3, 90)
    k = torch.tensor([1, 40, -2])
    same(ops.select_topk(*on(scores, k, eligible)), select_topk_reference(scores, k, eligible))


def test_topk_long_rows_in_one_program():
    for dtype in (torch.float32, torch.float64):
        scores, eligible = selection_inputs(2, 8200, dtype)
        k = torch.tensor([4100, 3])
        same(ops.select_topk(*on(scores, k, eligible)), select_topk_reference(scores, k, eligible))


def test_topk_non_contiguous_inputs():
    scores, eligible = selection_inputs(4, 45, torch.float32)
    s, e = strided(scores, eligible)
    k = torch.tensor([0, 0, 7, 0, 3, 0, 45, 0])[::2]  # strided k
    same(ops.select_topk(*on(s, k, e)), select_topk_reference(scores, k, eligible))


def test_empty_rows_and_columns():
    for B, L in ((0, 5), (3, 0)):
        scores, eligible = torch.rand(B, L), torch.ones(B, L, dtype=torch.bool)
        assert ops.select_topk(*on(scores, torch.ones(B, dtype=torch.int64), eligible)).shape == (B, L)
        assert ops.select_factor(*on(scores, eligible), 1.0).shape == (B, L)


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, -math.inf, math.nan, 0.7, -0.0]), st.booleans()),
                 min_size=1, max_size=12),
        min_size=1, max_size=3,
    ),
    k_seed=st.integers(0, 2**16),
)
def test_topk_property_exact_count_of_the_best(rows, k_seed):
    L = max(len(r) for r in rows)
    rows = [r + [(0.0, False)] * (L - len(r)) for r in rows]
    scores = torch.tensor([[s for s, _ in r] for r in rows], dtype=torch.float32)
    eligible = torch.tensor([[e for _, e in r] for r in rows])
    k = torch.randint(0, L + 2, (len(rows),), generator=torch.Generator().manual_seed(k_seed))
    out = ops.select_topk(*on(scores, k, eligible)).cpu()
    for b in range(len(rows)):
        order = brute_force_order(scores[b].tolist(), eligible[b].tolist())
        assert {i for i in range(L) if out[b, i]} == set(order[: int(k[b])])


# --------------------------------------------------------------------------- select_threshold


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_threshold_matches_reference(B, L, dtype):
    scores, eligible = selection_inputs(B, L, dtype)
    exact = float(scores[0, 0].double())  # a threshold equal to a score: >= keeps it
    for threshold in (0.5, exact, 0.9999, -math.inf, math.inf):
        out = ops.select_threshold(*on(scores, eligible), threshold)
        same(out, select_threshold_reference(scores, eligible, threshold))


def test_threshold_compares_in_float64_and_special_values():
    scores, eligible = special_row(torch.float32)
    for threshold in (0.5000001, float(torch.tensor(0.5000001, dtype=torch.float32)), 1e-40, 0.0, -0.0):
        same(ops.select_threshold(*on(scores, eligible), threshold),
             select_threshold_reference(scores, eligible, threshold))
    scores, eligible = close_float64(2, 40)
    threshold = float(scores[0].sort().values[20])
    same(ops.select_threshold(*on(scores, eligible), threshold), select_threshold_reference(scores, eligible, threshold))
    s, e = strided(scores, eligible)
    same(ops.select_threshold(*on(s, e), threshold), select_threshold_reference(scores, eligible, threshold))


# --------------------------------------------------------------------------- select_factor


def confident_inputs(B, L, dtype):
    """Scores near 1 (so prefixes run long), with ties, NaN and -inf."""
    _, eligible = selection_inputs(B, L)
    scores = 1.0 - with_ties(torch.rand(B, L, dtype=torch.float64), 50) ** 2 * 0.2
    if L > 3:
        scores[0, 1], scores[0, 2] = -math.inf, math.nan
    return scores.to(dtype), eligible


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("B,L", SHAPES)
def test_factor_matches_reference(B, L, dtype):
    scores, eligible = confident_inputs(B, L, dtype)
    factor = (0.3, 1.0, 2.5)[(B + L) % 3]
    same(ops.select_factor(*on(scores, eligible), factor), select_factor_reference(scores, eligible, factor))


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_factor_special_values(dtype):
    scores, eligible = special_row(dtype)  # scores above 1 make (n + 1) * (1 - c) negative
    for factor in (0.0, 1.0, 40.0, math.inf, -math.inf):
        same(ops.select_factor(*on(scores, eligible), factor), select_factor_reference(scores, eligible, factor))


def test_factor_float64_long_row_and_non_contiguous():
    scores, eligible = close_float64(2, 70)
    same(ops.select_factor(*on(scores, eligible), 60.0), select_factor_reference(scores, eligible, 60.0))
    s, e = strided(*confident_inputs(3, 50, torch.float32))
    same(ops.select_factor(*on(s, e), 1.5), select_factor_reference(s, e, 1.5))
    scores, eligible = confident_inputs(1, 8200, torch.float32)
    scores = 1.0 - (1.0 - scores) * 1e-3  # long prefixes
    same(ops.select_factor(*on(scores, eligible), 1.0), select_factor_reference(scores, eligible, 1.0))


# --------------------------------------------------------------------------- select_entropy_bounded


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
def test_entropy_bounded_matches_reference(B, L, dtype):
    entropy_dtype = SCORE_DTYPES[(SCORE_DTYPES.index(dtype) + L) % 4]  # mixed dtypes too
    error, entropy, eligible = eb_inputs(B, L, dtype, entropy_dtype)
    gamma = (0.0, 0.05, 0.4, math.inf)[(B + L) % 4]
    out = ops.select_entropy_bounded(*on(error, entropy, eligible), gamma)
    same(out, select_entropy_bounded_reference(error, entropy, eligible, gamma))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_entropy_bounded_gamma_on_a_prefix_sum_takes_the_exact_path(dtype):
    # gamma equal to a reference spread: the parallel sums cannot decide that
    # prefix, so the kernel redoes the sums in the reference's order.
    error, entropy, eligible = eb_inputs(1, 150, dtype, torch.float64)
    entropy = entropy * 3 + 1e-3
    for j in (0, 4, 17):
        gamma = float(sorted_spreads(error, entropy, eligible, 0)[j])
        out = ops.select_entropy_bounded(*on(error, entropy, eligible), gamma)
        expected = select_entropy_bounded_reference(error, entropy, eligible, gamma)
        same(out, expected)
        assert int(expected[0].sum()) >= j + 1
        # one ulp below fails that prefix
        below = math.nextafter(gamma, -math.inf)
        same(ops.select_entropy_bounded(*on(error, entropy, eligible), below),
             select_entropy_bounded_reference(error, entropy, eligible, below))


def test_entropy_bounded_special_entropies_and_errors():
    for dtype in SCORE_DTYPES:
        error, eligible = special_row(dtype)
        entropy = torch.tensor([[0.1, 0.0, 0.3, 0.2, 0.05, math.inf, 0.1, 0.1, 0.2, 0.1, math.nan,
                                 0.0, 0.01, 0.02, -0.0, 0.5, 0.1, 0.1, 0.1, -math.inf]], dtype=dtype)
        for gamma in (0.0, 0.2, math.inf):
            same(ops.select_entropy_bounded(*on(error, entropy, eligible), gamma),
                 select_entropy_bounded_reference(error, entropy, eligible, gamma))


def test_entropy_bounded_long_rows_and_non_contiguous():
    for dtype in (torch.float32, torch.float64):
        error, entropy, eligible = eb_inputs(1, 8200, dtype)
        entropy = entropy * 1e-3
        same(ops.select_entropy_bounded(*on(error, entropy, eligible), 0.5),
             select_entropy_bounded_reference(error, entropy, eligible, 0.5))
    error, entropy, eligible = eb_inputs(3, 60, torch.bfloat16)
    s, e = strided(error, eligible)
    h = entropy.t().contiguous().t()  # column-major
    same(ops.select_entropy_bounded(*on(s, h, e), 0.3), select_entropy_bounded_reference(error, entropy, eligible, 0.3))


# --------------------------------------------------------------------------- select_group


@pytest.mark.parametrize("index_dtype", (torch.int64, torch.int32))
@pytest.mark.parametrize("B,L", [(1, 1), (3, 20), (5, 33), (4, 100)])
def test_group_matches_reference(B, L, index_dtype):
    eligible = random_eligible(B, L)
    if B > 1:
        eligible[1] = False
    if B > 2:
        eligible[2] = False
        eligible[2, L - 1] = True
    n_groups = int(dmkernels.dilated_groups(L).max()) + 1
    for groups in (dmkernels.dilated_groups(L), torch.randint(-1, 6, (B, L))):
        groups = groups.to(index_dtype)
        for step in (torch.tensor(0), torch.tensor(n_groups + 2), torch.randint(-2, n_groups + 1, (B,))):
            step = step.to(index_dtype)
            out = ops.select_group(*on(eligible, groups, step))
            same(out, select_group_reference(eligible, groups, step))


def test_group_non_contiguous():
    eligible = random_eligible(4, 60)
    groups = torch.randint(0, 5, (60, 8)).t()[:4]  # [B, L], strided
    step = torch.randint(0, 4, (8,))[::2]
    _, e = strided(torch.zeros(4, 60), eligible)
    same(ops.select_group(*on(e, groups, step)), select_group_reference(eligible, groups, step))
    g1 = dmkernels.dilated_groups(120)[::2]  # [L], stride 2
    same(ops.select_group(*on(e, g1, torch.tensor(1))), select_group_reference(eligible, g1, torch.tensor(1)))


# --------------------------------------------------------------------------- all ops


def test_outputs_are_poisoned_under_the_test_suite():
    assert triton_select.poison_outputs()  # conftest.py: an element a kernel forgets fails


def _opcheck_cases():
    scores = torch.rand(2, 19)
    eligible = torch.rand(2, 19) < 0.5
    return [
        ("select_topk", (scores.double(), torch.tensor([3, 19], dtype=torch.int32), eligible)),
        ("select_threshold", (scores.bfloat16(), eligible, 0.5)),
        ("select_factor", (scores, eligible, 1.0)),
        ("select_entropy_bounded", (scores, scores * 0.1, eligible, 0.2)),
        ("select_group", (eligible, (torch.arange(38) % 4).reshape(2, 19).int(), torch.tensor([0, 2]))),
    ]


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(getattr(ops, name).default, args)
