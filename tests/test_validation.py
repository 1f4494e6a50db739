"""Bad input gets a clear error naming the op and the argument, with the same
exception type on every backend: through the public API, and through the raw
ops (torch.ops.dmkernels.*, torch.ops.dmkernels_triton.*, the reference's
registry check) directly. A wrong dtype or a non-tensor is a TypeError, any
other bad argument a ValueError (C++: TORCH_CHECK_TYPE / TORCH_CHECK_VALUE)."""
from __future__ import annotations

import pytest
import torch

import dmkernels
from dmkernels import _registry

S = torch.rand(2, 5)
E = torch.ones(2, 5, dtype=torch.bool)
L = torch.randn(2, 3, 11)
X = torch.zeros(2, 5, dtype=torch.int64)

# (name, call(backend), exception type, words the message must contain)
BAD_CALLS = [
    ("logits float64", lambda b: b.call("token_stats", L.double()), TypeError, ["token_stats", "logits", "float64"]),
    ("logits int64", lambda b: b.call("token_stats", L.long()), TypeError, ["logits", "int64"]),
    ("logits 0-d", lambda b: b.call("token_stats", torch.tensor(1.0)), ValueError, ["logits"]),
    ("logits V = 0", lambda b: b.call("token_stats", torch.randn(3, 0)), ValueError, ["logits", "V = 0"]),
    ("logits stride", lambda b: b.call("token_stats", torch.randn(11, 3).t()), ValueError, ["logits", "stride"]),
    ("temperature < 0", lambda b: b.call("token_stats", L, temperature=-0.5), ValueError, ["temperature"]),
    ("temperature NaN", lambda b: b.call("token_stats", L, temperature=float("nan")), ValueError, ["temperature"]),
    ("temperature str", lambda b: b.call("token_stats", L, temperature="hot"), TypeError, ["temperature"]),
    ("seed < 0", lambda b: b.call("token_stats", L, temperature=1.0, seed=-1), ValueError, ["seed"]),
    ("seed float", lambda b: b.call("token_stats", L, temperature=1.0, seed=1.5), TypeError, ["seed"]),
    ("offset < 0", lambda b: b.call("token_stats", L, offset=-3), ValueError, ["offset"]),
    ("positions shape", lambda b: b.call("token_stats", L, positions=torch.ones(2, 4, dtype=torch.bool)),
     ValueError, ["positions", "shape"]),
    ("positions dtype", lambda b: b.call("token_stats", L, positions=torch.ones(2, 3)), TypeError,
     ["positions", "bool"]),
    ("positions device", lambda b: b.call("token_stats", L, positions=torch.ones(2, 3, dtype=torch.bool,
                                                                                 device="meta")),
     ValueError, ["positions", "meta"]),
    ("positions list", lambda b: b.call("token_stats", L, positions=[True, False]), TypeError,
     ["positions", "Tensor"]),
    ("logits list", lambda b: dmkernels.token_stats([1.0, 2.0], backend=b.name), TypeError, ["logits", "Tensor"]),
    ("rng shape", lambda b: b.call("token_stats", L, temperature=1.0, rng=torch.tensor([1, 2, 3])),
     ValueError, ["rng", "shape"]),
    ("rng dtype", lambda b: b.call("token_stats", L, temperature=1.0, rng=torch.tensor([1.0, 2.0])),
     TypeError, ["rng", "int64"]),
    ("vocab_start < 0", lambda b: b.call("token_stats_partial", L, vocab_start=-1), ValueError, ["vocab_start"]),
    ("vocab_start + V", lambda b: b.call("token_stats_partial", L, vocab_start=2**24 - 5), ValueError,
     ["vocab_start", "2**24"]),
    ("vocab_start float", lambda b: b.call("token_stats_partial", L, vocab_start=1.5), TypeError, ["vocab_start"]),
    ("row_offset < 0", lambda b: b.call("token_stats_partial", L, row_offset=-2), ValueError, ["row_offset"]),
    ("partial logits", lambda b: b.call("token_stats_partial", L.double()), TypeError, ["logits"]),
    ("k dtype", lambda b: b.call("select_topk", S, torch.tensor([1.0, 2.0]), E), TypeError, ["k", "float32"]),
    ("k shape", lambda b: b.call("select_topk", S, torch.tensor([1, 2, 3]), E), ValueError, ["k", "shape"]),
    ("k float", lambda b: b.call("select_topk", S, 1.5, E), TypeError, ["k"]),
    ("eligible dtype", lambda b: b.call("select_topk", S, torch.tensor([1, 2]), E.float()), TypeError,
     ["eligible", "bool"]),
    ("eligible shape", lambda b: b.call("select_topk", S, torch.tensor([1, 2]), E[:, :4]), ValueError,
     ["eligible", "shape"]),
    ("scores 1-d", lambda b: b.call("select_topk", S[0], torch.tensor([1]), E[0]), ValueError, ["scores", "2-D"]),
    ("scores dtype", lambda b: b.call("select_topk", S.long(), torch.tensor([1, 2]), E), TypeError,
     ["scores", "int64"]),
    ("threshold NaN", lambda b: b.call("select_threshold", S, E, float("nan")), ValueError, ["threshold", "NaN"]),
    ("factor str", lambda b: b.call("select_factor", S, E, "big"), TypeError, ["factor"]),
    ("entropy shape", lambda b: b.call("select_entropy_bounded", S, S[:, :4], E, 0.1), ValueError,
     ["entropy", "shape"]),
    ("gamma NaN", lambda b: b.call("select_entropy_bounded", S, S, E, float("nan")), ValueError, ["gamma"]),
    ("groups shape", lambda b: b.call("select_group", E, torch.arange(4), 0), ValueError, ["groups", "shape"]),
    ("step shape", lambda b: b.call("select_group", E, torch.arange(5), torch.tensor([0, 1, 2])), ValueError,
     ["step", "shape"]),
    ("step < 0", lambda b: b.call("select_group", E, torch.arange(5), -1), ValueError, ["step"]),
    ("step float", lambda b: b.call("select_group", E, torch.arange(5), 1.0), TypeError, ["step"]),
    ("groups dtype", lambda b: b.call("select_group", E, torch.arange(5.0), 0), TypeError, ["groups", "float32"]),
    ("mask_id < 0", lambda b: b.call("commit_", X.clone(), X, E, -1), ValueError, ["mask_id"]),
    ("mask_id vocab", lambda b: b.call("commit_", X.clone(), X, E, 7, vocab_size=7), ValueError,
     ["mask_id", "vocabulary"]),
    ("x dtype", lambda b: b.call("commit_", X.float(), X, E, 7), TypeError, ["x", "float32"]),
    ("token shape", lambda b: b.call("commit_", X.clone(), X[:, :4], E, 7), ValueError, ["token", "shape"]),
    ("select dtype", lambda b: b.call("commit_", X.clone(), X, E.int(), 7), TypeError, ["select", "bool"]),
    ("x 1-d", lambda b: b.call("commit_", X.flatten(), X.flatten(), E.flatten(), 7), ValueError, ["x", "2-D"]),
    ("mask_id int32", lambda b: b.call("commit_", X.int(), X, E, 2**31), ValueError, ["mask_id", "int32"]),
]


def assert_fails_naming(call, error, words):
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__} instead of {error.__name__}: {info.value}"
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("call,words", [
    (lambda: dmkernels.dilated_groups(0), ["block_length", ">= 1"]),
    (lambda: dmkernels.dilated_groups(32, base=1), ["base", ">= 2"]),
])
def test_dilated_groups_names_the_argument(call, words):
    # No tensor argument, so no backend: checked once, here.
    assert_fails_naming(call, ValueError, ["dmkernels.dilated_groups:", *words])


@pytest.mark.parametrize("name,call,error,words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_public_api_names_the_argument(backend, name, call, error, words):
    assert_fails_naming(lambda: call(backend), error, words)


RAW_BAD = [(op, bad) for op, spec in _registry.OPS.items() for bad in spec.bad()]


@pytest.mark.parametrize("op,bad", RAW_BAD, ids=[f"{op}-{i}" for i, (op, _) in enumerate(RAW_BAD)])
def test_raw_ops_name_the_argument(backend, op, bad):
    # torch.ops.dmkernels.<op> (C++ checks), torch.ops.dmkernels_triton.<op> and the
    # reference (the registry's Python checks): the same type, the op and argument named.
    if bad.cpu_only and backend.device != "cpu":
        pytest.skip("checked where reading values is free (CPU tensors)")
    assert_fails_naming(lambda: backend.raw(op, *bad.args), bad.error, (f"dmkernels.{op}", *bad.words))


def test_negative_k_is_not_an_error_anywhere(backend):
    # The one rule for k < 0 (README, select_topk's docstring): it selects nothing.
    out = backend.raw("select_topk", S, torch.tensor([1, -1]), E)
    assert out.cpu().sum(-1).tolist() == [1, 0]


def test_every_op_has_bad_calls_for_each_error_type():
    for op, spec in _registry.OPS.items():
        errors = {bad.error for bad in spec.bad()}
        assert errors <= {ValueError, TypeError}, op
        assert ValueError in errors, op
