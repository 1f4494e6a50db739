"""commit_ on every backend against its reference; committed tokens are never overwritten."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import commit_reference

from conftest import requires_extension

MASK = 126336


def canvas(B, L, dtype=torch.int64, p_mask=0.5):
    x = torch.randint(0, 1000, (B, L), dtype=dtype)
    x[torch.rand(B, L) < p_mask] = MASK
    return x


def run_both(backend, x, token, select, mask_id=MASK):
    """commit_ on the backend's device and the reference on a CPU copy; both results."""
    x_ref = x.clone()
    ref = commit_reference(x_ref, token, select, mask_id)
    xd = backend.to(x.clone())  # x itself stays as it was
    changed, remaining = backend.call("commit_", xd, token, select, mask_id)
    assert changed.dtype == torch.bool and remaining.dtype == torch.int64
    assert changed.shape == x.shape and remaining.shape == (x.shape[0],) and changed.is_contiguous()
    return (xd.cpu(), changed.cpu(), remaining.cpu()), (x_ref, *ref)


def assert_same(ours, expected):
    for a, b in zip(ours, expected):
        assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("token_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 9), (3, 1), (5, 77), (4, 300), (8, 1024)])
def test_matches_reference(backend, B, L, x_dtype, token_dtype):
    x = canvas(B, L, x_dtype)
    if B > 1:
        x[1] = 5  # a row with no masks
    if B > 2:
        x[2] = MASK  # a row of masks only
    token = torch.randint(-1, 2000, (B, L), dtype=token_dtype)
    token[0, 0] = MASK  # writing the mask id is skipped
    select = torch.rand(B, L) < 0.5
    assert_same(*run_both(backend, x, token, select))


def test_writes_through_a_strided_view_of_the_canvas(backend):
    full = backend.to(canvas(4, 96))
    full_ref = full.cpu().clone()
    block = full[:, 32:64]  # the current block: a non-contiguous view
    token = torch.randint(0, 1000, (32, 4)).t()  # column-major token
    select = torch.ones(4, 64, dtype=torch.bool)[:, ::2]  # strided select
    changed, remaining = backend.call("commit_", block, token, select, MASK)
    changed_ref, remaining_ref = commit_reference(full_ref[:, 32:64], token, select, MASK)
    assert torch.equal(full.cpu(), full_ref)  # the columns outside the view are untouched too
    assert torch.equal(changed.cpu(), changed_ref) and torch.equal(remaining.cpu(), remaining_ref)
    assert (remaining == 0).all() and changed.is_contiguous()


def test_no_masked_positions_is_a_no_op_and_empty_shapes(backend):
    x = backend.to(torch.arange(20).reshape(2, 10))
    before = x.clone()
    changed, remaining = backend.call("commit_", x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), MASK)
    assert torch.equal(x, before) and not changed.any() and remaining.tolist() == [0, 0]
    for B, L in ((0, 4), (3, 0)):
        x = backend.to(torch.full((B, L), MASK))
        changed, remaining = backend.call("commit_", x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), MASK)
        assert changed.shape == (B, L) and remaining.tolist() == [0] * B


def test_property_never_overwrites_a_committed_token(backend):
    @settings(max_examples=backend.examples(200), deadline=None)
    @given(
        cells=st.lists(st.tuples(st.booleans(), st.integers(-2, 6), st.booleans(), st.integers(0, 6)),
                       min_size=1, max_size=30),
        rows=st.integers(1, 3),
    )
    def check(cells, rows):
        mask_id = 3
        x = torch.tensor([[mask_id if m else v for m, _, _, v in cells]] * rows)
        token = torch.tensor([[t for _, t, _, _ in cells]] * rows)
        select = torch.tensor([[s for _, _, s, _ in cells]] * rows)
        (x_out, changed, remaining), expected = run_both(backend, x, token, select, mask_id)
        assert_same((x_out, changed, remaining), expected)
        committed = x != mask_id
        assert torch.equal(x_out[committed], x[committed])  # committed tokens untouched
        assert torch.equal(changed, x_out != x)  # changed is exactly what was written
        assert (x_out[changed] == token[changed]).all() and not (changed & ~select).any()
        assert torch.equal(remaining, (x_out == mask_id).sum(-1))
        assert (token[changed] >= 0).all()

    check()


def test_self_overlapping_canvas_is_refused(backend):
    x = backend.to(torch.full((1, 4), 9)).expand(2, 4)  # both rows are the same memory
    token = torch.zeros(2, 4, dtype=torch.int64)
    select = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"dmkernels.commit_: x has elements that share memory .*x.clone\(\)"):
        backend.call("commit_", x, token, select, 9)
    assert (x == 9).all()


def test_int64_tokens_into_an_int32_canvas(backend):
    x = torch.full((2, 5), 3, dtype=torch.int32)
    token = torch.tensor([[1, 2, 4, 5, 6], [7, 8, 2**31, 9, 10]])
    select = torch.ones(2, 5, dtype=torch.bool)
    if backend.device == "cpu":  # free to check on the host: refused before anything is written
        xd = x.clone()
        with pytest.raises(ValueError,
                           match=r"dmkernels.commit_: token\[1, 2\] = 2147483648 does not fit x's dtype int32"):
            backend.call("commit_", xd, token, select, 3)
        assert (xd == 3).all()
        select[1, 2] = False  # an unselected token is never written: no error
        assert_same(*run_both(backend, x, token, select, mask_id=3))
        x1 = torch.full((1, 2), 3, dtype=torch.int32)  # the largest int32 fits
        backend.call("commit_", x1, torch.tensor([[2**31 - 1, 0]]), torch.ones(1, 2, dtype=torch.bool), 3)
        assert x1.tolist() == [[2**31 - 1, 0]]
    else:  # not checked on a GPU (documented): wraps as token.to(int32) does
        assert_same(*run_both(backend, x, token, select, mask_id=3))
    # negative int64 tokens are skipped, whatever their size
    token = torch.tensor([[-2**33, 11, 12, 13, -1], [0, 1, 2, 3, 4]])
    assert_same(*run_both(backend, x, token, torch.ones(2, 5, dtype=torch.bool), mask_id=3))


@requires_extension
def test_a_commit_compiles_fullgraph_and_matches_eager():
    # The wrapper's overlap and int32-fit checks cannot be traced; the compiled op
    # runs them when it runs.
    def commit(x, token, select):
        return dmkernels.commit_(x, token, select, 9)

    torch._dynamo.reset()
    x = torch.full((3, 17), 9)
    x[:, ::3] = 4
    token, select = torch.randint(0, 9, (3, 17)), torch.rand(3, 17) < 0.5
    x_eager, x_comp = x.clone(), x.clone()
    eager = commit(x_eager, token, select)
    compiled = torch.compile(commit, fullgraph=True, backend="aot_eager")(x_comp, token, select)
    assert torch.equal(x_eager, x_comp) and eager[0].any()
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
