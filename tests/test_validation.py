"""Bad input gets a clear error naming the argument, through the public API and
through torch.ops.dmkernels.* directly."""
from __future__ import annotations

import pytest
import torch

import dmkernels

from conftest import requires_extension

ERRORS = (ValueError, TypeError, RuntimeError)

S = torch.rand(2, 5)
E = torch.ones(2, 5, dtype=torch.bool)
L = torch.randn(2, 3, 11)

BAD_CALLS = [
    # (call, words the message must contain)
    (lambda: dmkernels.token_stats(L.double()), ["logits", "float64"]),
    (lambda: dmkernels.token_stats(L.long()), ["logits", "int64"]),
    (lambda: dmkernels.token_stats(torch.tensor(1.0)), ["logits"]),
    (lambda: dmkernels.token_stats(torch.randn(3, 0)), ["logits", "V = 0"]),
    (lambda: dmkernels.token_stats(torch.randn(11, 3).t()), ["logits", "stride"]),
    (lambda: dmkernels.token_stats(L, temperature=-0.5), ["temperature"]),
    (lambda: dmkernels.token_stats(L, temperature=float("nan")), ["temperature"]),
    (lambda: dmkernels.token_stats(L, temperature=1.0, seed=-1), ["seed"]),
    (lambda: dmkernels.token_stats(L, offset=-3), ["offset"]),
    (lambda: dmkernels.token_stats(L, positions=torch.ones(2, 4, dtype=torch.bool)), ["positions", "shape"]),
    (lambda: dmkernels.token_stats(L, positions=torch.ones(2, 3)), ["positions", "bool"]),
    (lambda: dmkernels.token_stats(L, positions=torch.ones(2, 3, dtype=torch.bool, device="meta")), ["positions", "meta"]),
    (lambda: dmkernels.token_stats([1.0, 2.0]), ["logits", "Tensor"]),
    (lambda: dmkernels.select_topk(S, torch.tensor([1, -2]), E), ["k", "-2"]),
    (lambda: dmkernels.select_topk(S, -1, E), ["k"]),
    (lambda: dmkernels.select_topk(S, torch.tensor([1.0, 2.0]), E), ["k", "float32"]),
    (lambda: dmkernels.select_topk(S, torch.tensor([1, 2, 3]), E), ["k", "shape"]),
    (lambda: dmkernels.select_topk(S, torch.tensor([1, 2]), E.float()), ["eligible", "bool"]),
    (lambda: dmkernels.select_topk(S, torch.tensor([1, 2]), E[:, :4]), ["eligible", "shape"]),
    (lambda: dmkernels.select_topk(S[0], torch.tensor([1]), E[0]), ["scores", "2-D"]),
    (lambda: dmkernels.select_topk(S.long(), torch.tensor([1, 2]), E), ["scores", "int64"]),
    (lambda: dmkernels.select_threshold(S, E, float("nan")), ["threshold", "NaN"]),
    (lambda: dmkernels.select_factor(S, E, "big"), ["factor"]),
    (lambda: dmkernels.select_entropy_bounded(S, S[:, :4], E, 0.1), ["entropy", "shape"]),
    (lambda: dmkernels.select_entropy_bounded(S, S, E, float("nan")), ["gamma"]),
    (lambda: dmkernels.dilated_groups(0), ["block_length"]),
    (lambda: dmkernels.dilated_groups(32, base=1), ["base"]),
    (lambda: dmkernels.select_group(E, torch.arange(4), 0), ["groups", "shape"]),
    (lambda: dmkernels.select_group(E, torch.arange(5), torch.tensor([0, 1, 2])), ["step", "shape"]),
    (lambda: dmkernels.select_group(E, torch.arange(5.0), 0), ["groups", "float32"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5).long(), torch.zeros(2, 5).long(), E, -1), ["mask_id"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5).long(), torch.zeros(2, 5).long(), E, 7, vocab_size=7), ["mask_id", "vocabulary"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5), torch.zeros(2, 5).long(), E, 7), ["x", "float32"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5).long(), torch.zeros(2, 4).long(), E, 7), ["token", "shape"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5).long(), torch.zeros(2, 5).long(), E.int(), 7), ["select", "bool"]),
    (lambda: dmkernels.commit_(torch.zeros(10).long(), torch.zeros(10).long(), E.flatten(), 7), ["x", "2-D"]),
    (lambda: dmkernels.commit_(torch.zeros(2, 5).int(), torch.zeros(2, 5).long(), E, 2**31), ["mask_id", "int32"]),
]


def assert_fails_naming(call, words, errors):
    with pytest.raises(errors) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_public_api_names_the_argument(index):
    assert_fails_naming(*BAD_CALLS[index], ERRORS)


OPS_BAD_CALLS = [
    (lambda: torch.ops.dmkernels.token_stats(L.double(), 0.0, 0, 0, False, None), ["logits"]),
    (lambda: torch.ops.dmkernels.token_stats(L, -1.0, 0, 0, False, None), ["temperature"]),
    (lambda: torch.ops.dmkernels.token_stats(L, 1.0, -5, 0, False, None), ["seed"]),
    (lambda: torch.ops.dmkernels.token_stats(L, 0.0, 0, 0, False, torch.ones(3, 2, dtype=torch.bool)), ["positions"]),
    (lambda: torch.ops.dmkernels.select_topk(S, torch.tensor([1, -1]), E), ["k", "-1"]),
    (lambda: torch.ops.dmkernels.select_topk(S, torch.tensor([1, 1]), E[:1]), ["eligible"]),
    (lambda: torch.ops.dmkernels.select_threshold(S, E, float("nan")), ["threshold"]),
    (lambda: torch.ops.dmkernels.select_factor(S.long(), E, 1.0), ["scores"]),
    (lambda: torch.ops.dmkernels.select_entropy_bounded(S, S.t(), E, 1.0), ["entropy"]),
    (lambda: torch.ops.dmkernels.select_group(E, torch.arange(3), torch.tensor(0)), ["groups"]),
    (lambda: torch.ops.dmkernels.commit_(torch.zeros(2, 5).long(), torch.zeros(2, 5).long(), E, -4), ["mask_id"]),
]


@requires_extension
@pytest.mark.parametrize("index", range(len(OPS_BAD_CALLS)))
def test_compiled_ops_name_the_argument(index):
    assert_fails_naming(*OPS_BAD_CALLS[index], RuntimeError)
