"""Triton commit_ (torch.ops.dmkernels_triton.commit_) against its reference.

Without a GPU it runs under the Triton interpreter on CPU tensors.
"""
from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dmkernels.reference import commit_reference  # noqa: E402
from dmkernels.triton import commit as triton_commit  # noqa: E402,F401  (registers the op)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
commit_ = torch.ops.dmkernels_triton.commit_

MASK = 126336


def canvas(B, L, dtype=torch.int64, p_mask=0.5):
    x = torch.randint(0, 1000, (B, L), dtype=dtype)
    x[torch.rand(B, L) < p_mask] = MASK
    return x


def run_both(x, token, select, mask_id=MASK):
    """commit_ on the device and the reference on a CPU copy; both results."""
    x_ref = x.clone()
    ref = commit_reference(x_ref, token, select, mask_id)
    xd, td, sd = (t.clone().to(DEVICE) for t in (x, token, select))  # x itself stays as it was
    changed, remaining = commit_(xd, td, sd, mask_id)
    assert changed.dtype == torch.bool and remaining.dtype == torch.int64
    assert changed.shape == x.shape and remaining.shape == (x.shape[0],)
    return (xd.cpu(), changed.cpu(), remaining.cpu()), (x_ref, *ref)


def assert_same(ours, expected):
    for a, b in zip(ours, expected):
        assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("token_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 9), (3, 1), (5, 77), (4, 300)])
def test_matches_reference(B, L, x_dtype, token_dtype):
    x = canvas(B, L, x_dtype)
    if B > 1:
        x[1] = 5  # a row with no masks
    if B > 2:
        x[2] = MASK  # a row of masks only
    token = torch.randint(-1, 2000, (B, L), dtype=token_dtype)
    token[0, 0] = MASK  # writing the mask id is skipped
    select = torch.rand(B, L) < 0.5
    assert_same(*run_both(x, token, select))


def test_writes_through_a_strided_view_of_the_canvas():
    full = canvas(4, 96).to(DEVICE)
    full_ref = full.cpu().clone()
    block = full[:, 32:64]  # the current block: a non-contiguous view
    token = torch.randint(0, 1000, (32, 4)).t()  # column-major token
    select = torch.ones(4, 64, dtype=torch.bool)[:, ::2]  # strided select
    changed, remaining = commit_(block, token.to(DEVICE), select.to(DEVICE), MASK)
    changed_ref, remaining_ref = commit_reference(full_ref[:, 32:64], token, select, MASK)
    assert torch.equal(full.cpu(), full_ref)
    assert torch.equal(changed.cpu(), changed_ref) and torch.equal(remaining.cpu(), remaining_ref)
    assert (remaining == 0).all() and changed.is_contiguous()


def test_no_masked_positions_is_a_no_op_and_empty_shapes():
    x = torch.arange(20).reshape(2, 10).to(DEVICE)
    before = x.clone()
    changed, remaining = commit_(x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), MASK)
    assert torch.equal(x, before) and not changed.any() and remaining.tolist() == [0, 0]
    for B, L in ((0, 4), (3, 0)):
        x = torch.full((B, L), MASK, device=DEVICE)
        changed, remaining = commit_(x, torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool), MASK)
        assert changed.shape == (B, L) and remaining.tolist() == [0] * B


def test_int64_tokens_into_an_int32_canvas():
    x = torch.full((1, 6), 7, dtype=torch.int32)
    x[0, :4] = 3
    token = torch.tensor([[2**32 + 5, 2**32 + 3, 2**40, -2**33, 11, 12]])
    select = torch.ones(1, 6, dtype=torch.bool)
    if DEVICE == "cpu":  # free to check on the host: refused before anything is written
        xd = x.clone()
        with pytest.raises(ValueError, match=r"commit_: token\[0, 0\] = 4294967301 does not fit x's dtype int32"):
            commit_(xd, token, select, 3)
        assert torch.equal(xd, x)
        select[0, :3] = False  # unselected tokens may be anything; negative ones are skipped
        assert_same(*run_both(x, token, select, mask_id=3))
    else:  # not checked on a GPU (documented): wraps as token.to(int32) does
        assert_same(*run_both(x, token, select, mask_id=3))


def test_self_overlapping_canvas_is_refused():
    x = torch.full((1, 4), 9, device=DEVICE).expand(2, 4)
    token = torch.zeros(2, 4, dtype=torch.int64, device=DEVICE)
    select = torch.ones(2, 4, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="commit_: x has elements that share memory"):
        commit_(x, token, select, 9)
    assert (x == 9).all()


@settings(max_examples=30, deadline=None)
@given(
    cells=st.lists(st.tuples(st.booleans(), st.integers(-2, 6), st.booleans(), st.integers(0, 6)), min_size=1, max_size=30),
    rows=st.integers(1, 3),
)
def test_property_never_overwrites_a_committed_token(cells, rows):
    mask_id = 3
    x = torch.tensor([[mask_id if m else v for m, _, _, v in cells]] * rows)
    token = torch.tensor([[t for _, t, _, _ in cells]] * rows)
    select = torch.tensor([[s for _, _, s, _ in cells]] * rows)
    (x_out, changed, remaining), expected = run_both(x, token, select, mask_id)
    assert_same((x_out, changed, remaining), expected)
    committed = x != mask_id
    assert torch.equal(x_out[committed], x[committed])  # committed tokens untouched
    assert torch.equal(changed, x_out != x)  # changed is exactly what was written
    assert torch.equal(remaining, (x_out == mask_id).sum(-1))


@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32])
def test_opcheck(x_dtype):
    x = torch.randint(0, 9, (3, 19), dtype=x_dtype)
    select = torch.rand(3, 19) < 0.5
    x[select] = 9
    token = torch.randint(-1, 12, (3, 19))
    args = tuple(t.to(DEVICE) for t in (x, token, select)) + (9,)
    torch.library.opcheck(commit_.default, args)
