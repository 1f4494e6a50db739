"""edit_ (token editing) on every backend against its reference: only editable
positions change, exactly where the proposal differs and is confident."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dmkernels
from dmkernels.reference import edit_reference

from conftest import requires_extension

CONF_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def run_both(backend, x, token, confidence, editable, threshold):
    """edit_ on the backend's device and the reference on a CPU copy; both results."""
    x_ref = x.clone()
    ref = edit_reference(x_ref, token, confidence, editable, threshold)
    xd = backend.to(x.clone())  # x itself stays as it was
    changed, edits = backend.call("edit_", xd, token, confidence, editable, threshold)
    assert changed.dtype == torch.bool and edits.dtype == torch.int64
    assert changed.shape == x.shape and edits.shape == (x.shape[0],) and changed.is_contiguous()
    return (xd.cpu(), changed.cpu(), edits.cpu()), (x_ref, *ref)


def assert_same(ours, expected):
    for a, b in zip(ours, expected):
        assert torch.equal(a, b), (a, b)


def proposal(B, L, x, conf_dtype, p_same=0.3):
    """Tokens (a share equal to x, some -1) and confidences with ties at 0.5, NaN and +-inf."""
    token = torch.randint(-1, 40, (B, L))
    same = torch.rand(B, L) < p_same
    token[same] = x.long()[same]
    confidence = torch.rand(B, L, dtype=torch.float64)
    special = torch.tensor([0.5, math.nan, math.inf, -math.inf, 0.0, 1.0], dtype=torch.float64)
    pick = torch.rand(B, L) < 0.3
    confidence[pick] = special[torch.randint(0, len(special), (int(pick.sum()),))]
    return token, confidence.to(conf_dtype)


@pytest.mark.parametrize("conf_dtype", CONF_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype,token_dtype", [(torch.int64, torch.int64), (torch.int32, torch.int64),
                                                 (torch.int64, torch.int32), (torch.int32, torch.int32)], ids=str)
@pytest.mark.parametrize("B,L", [(1, 1), (1, 9), (3, 1), (5, 77), (4, 300), (8, 1024)])
def test_matches_reference(backend, B, L, x_dtype, token_dtype, conf_dtype):
    x = torch.randint(0, 40, (B, L), dtype=x_dtype)
    token, confidence = proposal(B, L, x, conf_dtype)
    editable = torch.rand(B, L) < 0.6
    if B > 1:
        editable[1] = False  # a row with nothing editable
    if B > 2:
        editable[2] = True  # a row where everything is
    ours, expected = run_both(backend, x, token.to(token_dtype), confidence, editable, 0.5)
    assert_same(ours, expected)
    if B > 1:
        assert ours[2][1] == 0 and torch.equal(ours[0][1], x[1])


def next_up(c: torch.Tensor) -> torch.Tensor:
    """The next value of c's dtype above c (a finite c), by its bits."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[c.element_size()]
    i = c.view(bits)
    return (i + 1 if c >= 0 else i - 1).view(c.dtype)  # +0.0 -> the smallest subnormal


@pytest.mark.parametrize("conf_dtype", CONF_DTYPES, ids=str)
def test_ties_at_the_threshold_never_edit(backend, conf_dtype):
    # A confidence equal to the threshold (as the confidence's dtype holds it) stays.
    for threshold in (0.5, 0.9, 0.1, 0.0, 1.0, -3.0, 2.0**-20):
        c = torch.tensor(threshold, dtype=torch.float64).to(conf_dtype)
        above = next_up(c)
        x = torch.zeros(1, 2, dtype=torch.int64)
        confidence = torch.stack([c, above]).reshape(1, 2)
        (x_out, changed, edits), expected = run_both(
            backend, x, torch.tensor([[7, 8]]), confidence, torch.ones(1, 2, dtype=torch.bool), threshold)
        assert_same((x_out, changed, edits), expected)
        assert x_out.tolist() == [[0, 8]] and edits.tolist() == [1], (threshold, c, above)


@pytest.mark.parametrize("conf_dtype", CONF_DTYPES, ids=str)
def test_threshold_rounds_to_the_confidence_dtype(backend, conf_dtype):
    # confidence > threshold as PyTorch evaluates it with a Python float: the
    # threshold rounded to the confidence's dtype (bfloat16 and float16 through
    # float32). These thresholds round up, down, overflow, or round twice.
    thresholds = [0.1, 0.9, 1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40, 65519.0, 65520.0, 3.4e38, 1e39, -1e39,
                  float.fromhex("0x1.ffffffp127"), float.fromhex("0x1.fffffefffffffp127"), 1e-50, -1e-50, 6e-8,
                  math.inf, -math.inf, 1e-40]
    base = torch.tensor([0.1, 0.9, 1.0, 1.0078125, 1.0009765625, 1 + 2**-8, 65504.0, 3.4028234e38, 1e-40, 6e-8,
                         0.0, -0.0, math.inf, -math.inf, math.nan, -3.4028234e38, 1e-45], dtype=torch.float64)
    confidence = torch.cat([base, torch.tensor(thresholds, dtype=torch.float64)]).to(conf_dtype)
    L = confidence.numel()
    x = torch.zeros(len(thresholds), L, dtype=torch.int32)
    token = torch.arange(1, L + 1).expand(len(thresholds), L)
    editable = torch.ones(len(thresholds), L, dtype=torch.bool)
    for r, threshold in enumerate(thresholds):
        (x_out, changed, _), expected = run_both(
            backend, x[r:r + 1], token[r:r + 1], confidence.unsqueeze(0), editable[r:r + 1], threshold)
        assert_same((x_out, changed), expected[:2])
        assert torch.equal(changed[0], confidence > threshold)  # what PyTorch says, element by element
    # Where exact comparison and PyTorch's differ: float32(0.1) and bfloat16(0.1) lie above 0.1 but not
    # above 0.1 rounded to their dtype, so they do not edit; float64 holds float32(0.1) and 0.1 apart.
    c = torch.tensor([[0.1]], dtype=torch.float32).to(conf_dtype)
    one, yes = torch.ones(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool)
    changed, _ = backend.call("edit_", backend.to(torch.zeros(1, 1, dtype=torch.int64)), one, c, yes, 0.1)
    if conf_dtype in (torch.float32, torch.bfloat16):
        assert c.double() > 0.1 and not changed.any()
    else:  # float16(0.1) lies below 0.1
        assert changed.all() == (conf_dtype == torch.float64)


@pytest.mark.parametrize("conf_dtype", CONF_DTYPES, ids=str)
def test_nan_and_infinite_confidences_and_thresholds(backend, conf_dtype):
    confidence = torch.tensor([[math.nan, math.inf, -math.inf, 0.3, -0.0]], dtype=torch.float64).to(conf_dtype)
    token = torch.tensor([[1, 2, 3, 4, 5]])
    editable = torch.ones(1, 5, dtype=torch.bool)
    expect = {
        -math.inf: [False, True, False, True, True],  # everything but NaN and -inf
        math.inf: [False] * 5,
        0.0: [False, True, False, True, False],  # -0.0 > 0.0 is False
        0.3: [False, True, False, False, False],
    }
    for threshold, want in expect.items():
        (x_out, changed, edits), expected = run_both(
            backend, torch.zeros(1, 5, dtype=torch.int64), token, confidence, editable, threshold)
        assert_same((x_out, changed, edits), expected)
        assert changed[0].tolist() == want, (threshold, changed)


def test_nothing_or_one_position_editable(backend):
    x = torch.randint(0, 9, (3, 17))
    token = (x + 1) % 9  # every proposal differs
    confidence = torch.full((3, 17), 0.99)
    editable = torch.zeros(3, 17, dtype=torch.bool)
    (x_out, changed, edits), expected = run_both(backend, x, token, confidence, editable, 0.5)
    assert_same((x_out, changed, edits), expected)
    assert torch.equal(x_out, x) and not changed.any() and edits.tolist() == [0, 0, 0]
    editable[1, 16] = True  # the last position of one row
    editable[2, 0] = True
    confidence[2, 0] = 0.2  # editable but not confident
    (x_out, changed, edits), expected = run_both(backend, x, token, confidence, editable, 0.5)
    assert_same((x_out, changed, edits), expected)
    assert edits.tolist() == [0, 1, 0] and changed.nonzero().tolist() == [[1, 16]] and x_out[1, 16] == token[1, 16]


def test_negative_and_equal_tokens_are_not_edits(backend):
    x = torch.tensor([[4, 4, 4, 4]], dtype=torch.int32)
    token = torch.tensor([[4, -1, -(2**40), 5]])
    (x_out, changed, edits), expected = run_both(
        backend, x, token, torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert_same((x_out, changed, edits), expected)
    assert x_out.tolist() == [[4, 4, 4, 5]] and changed.tolist() == [[False, False, False, True]]


def test_writes_through_a_strided_view_of_the_canvas(backend):
    full = backend.to(torch.randint(0, 50, (4, 96)))
    full_ref = full.cpu().clone()
    block = full[:, 32:64]  # the current block: a non-contiguous view
    token = torch.randint(0, 50, (32, 4)).t()  # column-major
    confidence = torch.rand(64, 4, dtype=torch.float64).t()[:, ::2]  # strided both ways
    editable = (torch.rand(4, 64) < 0.7)[:, 1::2]
    changed, edits = backend.call("edit_", block, token, confidence, editable, 0.3)
    changed_ref, edits_ref = edit_reference(full_ref[:, 32:64], token, confidence, editable, 0.3)
    assert torch.equal(full.cpu(), full_ref)  # the columns outside the view are untouched too
    assert torch.equal(changed.cpu(), changed_ref) and torch.equal(edits.cpu(), edits_ref)
    assert changed.is_contiguous() and edits_ref.sum() > 0


def test_empty_shapes(backend):
    for B, L in ((0, 4), (3, 0), (0, 0)):
        x = backend.to(torch.zeros(B, L, dtype=torch.int64))
        changed, edits = backend.call("edit_", x, torch.ones(B, L, dtype=torch.int64), torch.ones(B, L),
                                      torch.ones(B, L, dtype=torch.bool), 0.5)
        assert changed.shape == (B, L) and edits.tolist() == [0] * B


def test_property_only_editable_confident_differing_positions_change(backend):
    specials = [math.nan, math.inf, -math.inf, 0.25, 0.5, 0.75, 1.0]

    @settings(max_examples=backend.examples(200), deadline=None)
    @given(
        cells=st.lists(st.tuples(st.integers(0, 4), st.integers(-2, 4), st.sampled_from(specials), st.booleans()),
                       min_size=1, max_size=30),
        rows=st.integers(1, 3),
        threshold=st.sampled_from([-math.inf, 0.0, 0.5, 0.75, 1.0, math.inf]),
        conf_dtype=st.sampled_from(CONF_DTYPES),
        x_dtype=st.sampled_from([torch.int64, torch.int32]),
    )
    def check(cells, rows, threshold, conf_dtype, x_dtype):
        x = torch.tensor([[v for v, _, _, _ in cells]] * rows, dtype=x_dtype)
        token = torch.tensor([[t for _, t, _, _ in cells]] * rows)
        confidence = torch.tensor([[c for _, _, c, _ in cells]] * rows, dtype=torch.float64).to(conf_dtype)
        editable = torch.tensor([[e for _, _, _, e in cells]] * rows)
        (x_out, changed, edits), expected = run_both(backend, x, token, confidence, editable, threshold)
        assert_same((x_out, changed, edits), expected)
        assert torch.equal(x_out[~editable], x[~editable])  # non-editable positions untouched
        assert torch.equal(changed, x_out != x)  # changed is exactly what was written
        assert torch.equal(edits, changed.sum(-1))
        assert (x_out[changed] == token[changed].to(x_dtype)).all() and (token[changed] >= 0).all()
        assert (confidence[changed].double() > threshold).all()  # NaN never edits
        # Positions that could have been edited and were not: equal token, negative, or not confident.
        missed = editable & ~changed
        assert ((token == x) | (token < 0) | ~(confidence > threshold))[missed].all()

    check()


def test_self_overlapping_canvas_is_refused(backend):
    x = backend.to(torch.full((1, 4), 9)).expand(2, 4)  # both rows are the same memory
    args = (torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"dmkernels.edit_: x has elements that share memory .*x.clone\(\)"):
        backend.call("edit_", x, *args)
    assert (x == 9).all()


def test_int64_tokens_into_an_int32_canvas(backend):
    x = torch.full((2, 5), 3, dtype=torch.int32)
    token = torch.tensor([[1, 2, 4, 5, 6], [7, 8, 2**31, 9, 10]])
    confidence = torch.ones(2, 5)
    editable = torch.ones(2, 5, dtype=torch.bool)
    if backend.device == "cpu":  # free to check on the host: refused before anything is written
        xd = x.clone()
        with pytest.raises(ValueError,
                           match=r"dmkernels.edit_: token\[1, 2\] = 2147483648 does not fit x's dtype int32"):
            backend.call("edit_", xd, token, confidence, editable, 0.5)
        assert (xd == 3).all()
        editable[1, 2] = False  # a token that may not be written is never checked
        assert_same(*run_both(backend, x, token, confidence, editable, 0.5))
        x1 = torch.full((1, 2), 3, dtype=torch.int32)  # the largest int32 fits
        backend.call("edit_", x1, torch.tensor([[2**31 - 1, 0]]), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool),
                     0.5)
        assert x1.tolist() == [[2**31 - 1, 0]]
    else:  # not checked on a GPU (documented): wraps as token.to(int32) does
        assert_same(*run_both(backend, x, token, confidence, editable, 0.5))


W = torch.zeros(2, 5, dtype=torch.int64)
C = torch.rand(2, 5)
E = torch.ones(2, 5, dtype=torch.bool)

PUBLIC_BAD = [
    ("threshold str", lambda b: b.call("edit_", W.clone(), W, C, E, "high"), TypeError, ["threshold"]),
    ("threshold tensor", lambda b: b.call("edit_", W.clone(), W, C, E, torch.tensor(0.5)), TypeError, ["threshold"]),
    ("threshold NaN", lambda b: b.call("edit_", W.clone(), W, C, E, math.nan), ValueError, ["threshold", "NaN"]),
    ("x float", lambda b: b.call("edit_", W.float(), W, C, E, 0.5), TypeError, ["x", "float32"]),
    ("x 1-d", lambda b: b.call("edit_", W[0].clone(), W[0], C[0], E[0], 0.5), ValueError, ["x", "2-D"]),
    ("x list", lambda b: dmkernels.edit_([[1, 2]], W, C, E, 0.5, backend=b.name), TypeError, ["x", "Tensor"]),
    ("token dtype", lambda b: b.call("edit_", W.clone(), W.float(), C, E, 0.5), TypeError, ["token", "float32"]),
    ("token shape", lambda b: b.call("edit_", W.clone(), W[:, :3], C, E, 0.5), ValueError, ["token", "shape"]),
    ("confidence dtype", lambda b: b.call("edit_", W.clone(), W, C.int(), E, 0.5), TypeError,
     ["confidence", "int32"]),
    ("confidence shape", lambda b: b.call("edit_", W.clone(), W, C[:1], E, 0.5), ValueError,
     ["confidence", "shape"]),
    ("confidence device", lambda b: b.call("edit_", W.clone(), W, C.to("meta"), E, 0.5), ValueError,
     ["confidence", "meta"]),
    ("editable dtype", lambda b: b.call("edit_", W.clone(), W, C, E.float(), 0.5), TypeError, ["editable", "bool"]),
    ("editable shape", lambda b: b.call("edit_", W.clone(), W, C, E.t(), 0.5), ValueError, ["editable", "shape"]),
]


@pytest.mark.parametrize("name,call,error,words", PUBLIC_BAD, ids=[c[0] for c in PUBLIC_BAD])
def test_public_api_names_the_argument(backend, name, call, error, words):
    with pytest.raises(Exception) as info:
        call(backend)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    for word in ["dmkernels.edit_:", *words]:
        assert word in str(info.value), (word, str(info.value))


@requires_extension
def test_a_step_with_edit_compiles_fullgraph_and_matches_eager():
    # The public wrapper and the raw op trace through the registry's fake (no
    # host read of the tensors under torch.compile).
    def step(x, token, confidence, threshold: float):
        changed, edits = dmkernels.edit_(x, token, confidence, x != 9, threshold)
        again, none = torch.ops.dmkernels.edit_(x, token, confidence, x != 9, threshold)
        return changed, edits, again, none

    torch._dynamo.reset()
    x = torch.randint(0, 10, (3, 17))
    token, confidence = torch.randint(0, 10, (3, 17)), torch.rand(3, 17)
    x_eager, x_comp = x.clone(), x.clone()
    eager = step(x_eager, token, confidence, 0.4)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x_comp, token, confidence, 0.4)
    assert torch.equal(x_eager, x_comp) and eager[1].sum() > 0 and eager[3].sum() == 0  # the second call finds nothing
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@pytest.mark.parametrize("conf_dtype", CONF_DTYPES, ids=str)
def test_no_host_sync_inside_a_step(backend, conf_dtype):
    # What a sampler step passes (an int64 canvas and tokens): nothing reads the
    # device on the host, the threshold's rounding included.
    from dmkernels.testing import forbid_host_sync, step_scope

    x = backend.to(torch.randint(0, 9, (2, 7)))
    token, confidence = backend.to(torch.randint(0, 9, (2, 7))), backend.to(torch.rand(2, 7).to(conf_dtype))
    x_ref = x.cpu().clone()
    with forbid_host_sync(), step_scope():
        changed, edits = dmkernels.edit_(x, token, confidence, x != 3, 0.1, backend=backend.name)
    want = edit_reference(x_ref, token.cpu(), confidence.cpu(), x_ref != 3, 0.1)
    assert torch.equal(x.cpu(), x_ref) and torch.equal(changed.cpu(), want[0]) and torch.equal(edits.cpu(), want[1])
