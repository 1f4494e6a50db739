"""dmkernels.generate with the EntropyBounded (EB-Sampler) and Dilated (DUS) policies
against the eager references (dmkernels/bench/eager/policies.py); same-seed determinism of
dmkernels.generate, also across backends."""
from __future__ import annotations

import pytest
import torch

from conftest import why_not
from dmkernels.bench.eager import policies as eager
from parity_harness import (
    assert_different_distribution,
    assert_same_distribution,
    one_thread,  # noqa: F401  (fixture)
    prompts,
    tiny_model,
)

dmkernels = pytest.importorskip("dmkernels")
policies = pytest.importorskip("dmkernels.policies")
if not hasattr(dmkernels, "generate"):
    pytest.skip("dmkernels.generate is not there yet", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
MASK = V - 1


def _batch(B):
    if B == 1:
        return prompts(1, 5, V, seed=31)
    return prompts(3, 6, V, pads=(0, 2, 4), seed=32)


def _ours(model, ids, am, gen, block, policy, **kw):
    out = dmkernels.generate(model, ids, attention_mask=am, gen_length=gen, block_length=block, steps=gen,
                             policy=policy, mask_id=MASK, **kw)
    return out.sequences, out.model_calls


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("error", ["entropy", "confidence", "margin"])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 4.0, 1e9])
@pytest.mark.parametrize("gen,block", [(12, 4), (10, 5), (8, 8)])
def test_entropy_bounded_greedy_identical(B, error, gamma, gen, block):
    model = tiny_model(V)
    ids, am = _batch(B)
    expected, expected_nfe = eager.generate_entropy_bounded(model, ids, am, gen_length=gen, block_length=block,
                                                            gamma=gamma, error=error, mask_id=MASK)
    got, nfe = _ours(model, ids, am, gen, block, policies.EntropyBounded(gamma, error=error))
    assert torch.equal(got, expected)
    assert nfe == expected_nfe


@pytest.mark.parametrize("block,base", [(8, 2), (12, 2), (9, 3), (5, 2), (16, 4), (1, 2), (6, 3)])
def test_dilated_groups_match(block, base):
    assert dmkernels.dilated_groups(block, base).tolist() == eager.dilated_groups(block, base)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("base", [2, 3])
@pytest.mark.parametrize("remask_threshold", [None, 0.3, 0.7, 1.0])  # 1.0: about only the best of each group
@pytest.mark.parametrize("gen,block", [(16, 8), (12, 12), (10, 5), (4, 1)])
def test_dilated_greedy_identical(B, base, remask_threshold, gen, block):
    model = tiny_model(V)
    ids, am = _batch(B)
    expected, expected_nfe = eager.generate_dilated(model, ids, am, gen_length=gen, block_length=block, base=base,
                                                    remask_threshold=remask_threshold, mask_id=MASK)
    got, nfe = _ours(model, ids, am, gen, block, policies.Dilated(base=base, remask_threshold=remask_threshold))
    assert torch.equal(got, expected)
    assert nfe == expected_nfe


# ----------------------------------------------------------------------------- sampling

NV = 12
N = 2000


def _sample_pair(which, temperature, eager_temperature=None, gen=3, **kw):
    model = tiny_model(NV, seed=1, logit_std=2.0)
    ids, _ = prompts(1, 3, NV, seed=5)
    ids = ids.expand(N, -1).contiguous()
    if which == "eb":
        policy = policies.EntropyBounded(kw["gamma"], error=kw.get("error", "entropy"))
        ref = eager.generate_entropy_bounded
    else:
        policy = policies.Dilated(base=kw.get("base", 2), remask_threshold=kw.get("remask_threshold"))
        ref = eager.generate_dilated
    got = dmkernels.generate(model, ids, gen_length=gen, block_length=gen, steps=gen, policy=policy,
                             temperature=temperature, mask_id=NV - 1).sequences
    t = temperature if eager_temperature is None else eager_temperature
    expected, _ = ref(model, ids, gen_length=gen, block_length=gen, mask_id=NV - 1, temperature=t, **kw)
    return got[:, 3:], expected[:, 3:]


@pytest.mark.parametrize("which,kw", [
    ("eb", dict(gamma=0.5)),
    ("eb", dict(gamma=2.0, error="margin")),
    ("dus", dict()),
    ("dus", dict(remask_threshold=0.5, base=3)),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{x}" for k, x in v.items()))
def test_sampling_same_distribution(which, kw):
    got, expected = _sample_pair(which, 1.0, **kw)
    assert_same_distribution(got, expected)


def test_frequency_test_catches_twice_the_temperature():
    got, expected = _sample_pair("eb", 1.0, eager_temperature=2.0, gamma=0.5)
    assert_different_distribution(got, expected)


# ----------------------------------------------------------------------------- seeds and backends


def _seeded(policy, seed, backend=None, **kw):
    model = tiny_model(16)
    ids, am = prompts(2, 3, 16, pads=(0, 1), seed=33)
    return dmkernels.generate(model, ids, attention_mask=am, gen_length=4, block_length=2, steps=4, policy=policy,
                              temperature=1.0, seed=seed, mask_id=15, backend=backend, **kw).sequences


POLICIES = [
    lambda: policies.LowConfidence(),
    lambda: policies.Random(),
    lambda: policies.EntropyBounded(0.5),
    lambda: policies.Dilated(remask_threshold=0.5),
]


@pytest.mark.parametrize("make_policy", POLICIES, ids=["low_confidence", "random", "eb", "dus"])
def test_same_seed_same_tokens(make_policy):
    a = _seeded(make_policy(), 1234)
    b = _seeded(make_policy(), 1234)
    assert torch.equal(a, b)
    # the seed, not torch's global state, decides
    torch.manual_seed(99)
    c = _seeded(make_policy(), 1234)
    assert torch.equal(a, c)


def _available_backends():
    return [name for name in ("reference", "native", "triton") if why_not(name, "cpu") is None]


@pytest.mark.parametrize("make_policy", POLICIES[:1] + POLICIES[2:], ids=["low_confidence", "eb", "dus"])
def test_same_seed_same_tokens_across_backends(make_policy, monkeypatch):
    results = {}
    for backend in _available_backends():
        monkeypatch.setenv("DMKERNELS_BACKEND", backend)
        results[backend] = _seeded(make_policy(), 77)
    monkeypatch.delenv("DMKERNELS_BACKEND")
    first = next(iter(results.values()))
    for backend, x in results.items():
        assert torch.equal(x, first), f"{backend} differs: {x.tolist()} vs {first.tolist()}"
