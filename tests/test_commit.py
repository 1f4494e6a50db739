"""commit_ against its reference; committed tokens are never overwritten."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import commit_reference

from conftest import requires_extension

pytestmark = requires_extension

MASK = 126336


def canvas(B, L, dtype=torch.int64, p_mask=0.5):
    x = torch.randint(0, 1000, (B, L), dtype=dtype)
    x[torch.rand(B, L) < p_mask] = MASK
    return x


@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("token_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 9), (3, 1), (8, 1024), (5, 77)])
def test_matches_reference(B, L, x_dtype, token_dtype):
    x = canvas(B, L, x_dtype)
    if B > 1:
        x[1] = 5  # a row with no masks
    token = torch.randint(-1, 2000, (B, L), dtype=token_dtype)
    token[0, 0] = MASK  # writing the mask id is skipped
    select = torch.rand(B, L) < 0.5
    x_ref = x.clone()
    changed, remaining = dmkernels.commit_(x, token, select, MASK)
    changed_ref, remaining_ref = commit_reference(x_ref, token, select, MASK)
    assert torch.equal(x, x_ref)
    assert torch.equal(changed, changed_ref) and torch.equal(remaining, remaining_ref)
    assert remaining.dtype == torch.int64 and changed.dtype == torch.bool


def test_writes_through_a_strided_view_of_the_canvas():
    full = canvas(4, 96)
    full_ref = full.clone()
    block = full[:, 32:64]  # the current block: a non-contiguous view
    token = torch.randint(0, 1000, (4, 32))
    select = torch.ones(4, 32, dtype=torch.bool)
    changed, remaining = dmkernels.commit_(block, token, select, MASK)
    commit_reference(full_ref[:, 32:64], token, select, MASK)
    assert torch.equal(full, full_ref)
    assert (remaining == 0).all()
    assert torch.equal(full[:, :32], full_ref[:, :32]) and torch.equal(full[:, 64:], full_ref[:, 64:])


def test_no_masked_positions_is_a_no_op():
    x = torch.arange(20).reshape(2, 10)
    before = x.clone()
    changed, remaining = dmkernels.commit_(x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), MASK)
    assert torch.equal(x, before) and not changed.any() and remaining.tolist() == [0, 0]


@settings(max_examples=200, deadline=None)
@given(
    cells=st.lists(st.tuples(st.booleans(), st.integers(-2, 6), st.booleans(), st.integers(0, 6)), min_size=1, max_size=30),
    rows=st.integers(1, 3),
)
def test_property_never_overwrites_a_committed_token(cells, rows):
    mask_id = 3
    L = len(cells)
    x = torch.tensor([[mask_id if m else v for m, _, _, v in cells]] * rows)
    token = torch.tensor([[t for _, t, _, _ in cells]] * rows)
    select = torch.tensor([[s for _, _, s, _ in cells]] * rows)
    before = x.clone()
    changed, remaining = dmkernels.commit_(x, token, select, mask_id)
    committed = before != mask_id
    assert torch.equal(x[committed], before[committed])  # committed tokens untouched
    assert torch.equal(changed, x != before)  # changed is exactly what was written
    assert (x[changed] == token[changed]).all() and not (changed & ~select).any()
    assert torch.equal(remaining, (x == mask_id).sum(-1))
    assert (token[changed] >= 0).all()


BACKENDS = ["reference", "native", pytest.param("triton", marks=pytest.mark.filterwarnings("ignore"))]


def _triton_or_skip(backend):
    if backend == "triton" and dmkernels.backends()["triton"] != "available":
        pytest.skip(f"triton: {dmkernels.backends()['triton']}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_overlapping_canvas_is_refused_on_every_backend(backend):
    _triton_or_skip(backend)
    x = torch.full((1, 4), 9).expand(2, 4)  # both rows are the same memory
    token = torch.zeros(2, 4, dtype=torch.int64)
    select = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"dmkernels.commit_: x has elements that share memory .*x.clone\(\)"):
        dmkernels.commit_(x, token, select, 9, backend=backend)
    assert (x == 9).all()


def test_compiled_op_refuses_a_self_overlapping_canvas():
    x = torch.full((1, 4), 9).expand(2, 4)
    with pytest.raises(ValueError, match="commit_: x has elements that share memory"):
        torch.ops.dmkernels.commit_(x, torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.bool), 9)
    assert (x == 9).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_int64_tokens_that_do_not_fit_an_int32_canvas_are_refused_on_the_cpu(backend):
    _triton_or_skip(backend)
    x = torch.full((2, 5), 3, dtype=torch.int32)
    token = torch.tensor([[1, 2, 4, 5, 6], [7, 8, 2**31, 9, 10]])
    select = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"dmkernels.commit_: token\[1, 2\] = 2147483648 does not fit x's dtype int32"):
        dmkernels.commit_(x, token, select, 3, backend=backend)
    assert (x == 3).all()  # refused before anything was written
    select[1, 2] = False  # an unselected token is never written: no error
    changed, remaining = dmkernels.commit_(x, token, select, 3, backend=backend)
    assert x[1, 2] == 3 and x[0].tolist() == [1, 2, 4, 5, 6] and remaining.tolist() == [0, 1]
    x = torch.full((1, 2), 3, dtype=torch.int32)  # the largest int32 fits
    dmkernels.commit_(x, torch.tensor([[2**31 - 1, 0]]), torch.ones(1, 2, dtype=torch.bool), 3, backend=backend)
    assert x.tolist() == [[2**31 - 1, 0]]
