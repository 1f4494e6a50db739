"""dmkernels.compat.fast_dllm against the eager Fast-dLLM reference (dmkernels/bench/eager/fast_dllm.py):
identical tokens and model-call counts at temperature 0, the same distribution when sampling."""
from __future__ import annotations

import pytest
import torch

from dmkernels.bench.eager import fast_dllm as eager
from parity_harness import (
    assert_different_distribution,
    assert_same_distribution,
    large,  # noqa: F401  (fixture)
    one_thread,  # noqa: F401  (fixture)
    llada_like_model,
    prompts,
    tiny_model,
)

ours = pytest.importorskip("dmkernels.compat.fast_dllm")

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
MASK = V - 1
FNS = ["generate", "generate_with_prefix_cache", "generate_with_dual_cache"]

SHAPES = [  # (gen_length, block_length, steps)
    (8, 8, 8),
    (12, 4, 6),
    (10, 5, 2),   # one step per block
    (9, 3, 9),
    (6, 6, 4),
]
RULES = [
    {},
    {"threshold": 0.9},
    {"threshold": 0.5},
    {"threshold": 0.0},   # everything passes: a block in one call
    {"factor": 0.5},
    {"factor": 1.0},
    {"factor": 3.0},
    {"factor": 1.0, "threshold": 0.9},  # factor takes precedence
]


def _rule_id(rule):
    return "-".join(f"{k}{v}" for k, v in rule.items()) or "counts"


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "g{}b{}s{}".format(*s))
@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_greedy_identical(fn, B, shape, rule):
    gen, block, steps = shape
    model = tiny_model(V)
    ids, _ = prompts(B, 5, V, seed=10 + B)
    kw = dict(steps=steps, gen_length=gen, block_length=block, mask_id=MASK, **rule)
    expected, expected_nfe = getattr(eager, fn)(model, ids, **kw)
    got, nfe = getattr(ours, fn)(model, ids, **kw)
    assert torch.equal(got, expected)
    assert nfe == expected_nfe
    assert not (got == MASK).any()


def test_factor_quirk_is_exercised():
    """Some step of these runs hits the fork's quirk (first failure at the last ranked
    position -> all committed); the no-quirk rule would commit one fewer there."""
    model = tiny_model(V)
    ids, _ = prompts(2, 5, V, seed=12)
    seen = []
    original = eager._step

    def spy(logits, x, eligible, *args):
        x0, commit = original(logits, x, eligible, *args)
        seen.append((int(eligible.sum(-1).max()), int(commit.sum(-1).max())))
        return x0, commit

    eager._step = spy
    try:
        for factor in (0.5, 1.0, 3.0):
            eager.generate(model, ids, steps=8, gen_length=8, block_length=8, mask_id=MASK, factor=factor)
    finally:
        eager._step = original
    assert any(n == c and n >= 2 for n, c in seen), seen


# ----------------------------------------------------------------------------- sampling

NV = 12
N = 2000


def _sample_pair(fn, temperature, eager_temperature=None, gen=2, **rule):
    model = tiny_model(NV, seed=1, logit_std=2.0)
    ids, _ = prompts(1, 3, NV, seed=5)
    ids = ids.expand(N, -1).contiguous()
    kw = dict(steps=gen, gen_length=gen, block_length=gen, mask_id=NV - 1, **rule)
    got, _ = getattr(ours, fn)(model, ids, temperature=temperature, **kw)
    t = temperature if eager_temperature is None else eager_temperature
    expected, _ = getattr(eager, fn)(model, ids, temperature=t, **kw)
    return got[:, 3:], expected[:, 3:]


@pytest.mark.parametrize("fn,temperature,rule", [
    ("generate", 1.0, {}),
    ("generate_with_dual_cache", 1.0, {"threshold": 0.5}),
    ("generate_with_prefix_cache", 0.7, {"factor": 1.0}),
    ("generate", 0.0, {"remasking": "random", "threshold": 0.5}),
    ("generate_with_dual_cache", 1.0, {"remasking": "random"}),
    ("generate", 0.0, {"remasking": "random", "factor": 1.0}),
])
def test_sampling_same_distribution(fn, temperature, rule):
    gen = 3 if temperature == 0 else 2
    got, expected = _sample_pair(fn, temperature, gen=gen, **rule)
    assert_same_distribution(got, expected)


def test_frequency_test_catches_twice_the_temperature():
    got, expected = _sample_pair("generate_with_dual_cache", 1.0, eager_temperature=2.0, threshold=0.5)
    assert_different_distribution(got, expected)


@pytest.mark.parametrize("fn", FNS)
def test_same_seed_same_tokens(fn):
    model = tiny_model(V)
    ids, _ = prompts(2, 5, V, seed=13)
    kw = dict(steps=4, gen_length=8, block_length=4, temperature=1.0, mask_id=MASK, threshold=0.5)
    torch.manual_seed(3)
    a = getattr(ours, fn)(model, ids, **kw)
    torch.manual_seed(3)
    b = getattr(ours, fn)(model, ids, **kw)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


# ----------------------------------------------------------------------------- LLaDA-size (opt-in)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("rule", [{}, {"threshold": 0.9}, {"factor": 1.0}], ids=_rule_id)
def test_greedy_identical_llada_vocabulary(large, fn, rule):
    model = llada_like_model()
    ids, _ = prompts(2, 16, 126464, seed=14)
    kw = dict(steps=32, gen_length=64, block_length=32, mask_id=126336, **rule)
    expected, expected_nfe = getattr(eager, fn)(model, ids, **kw)
    got, nfe = getattr(ours, fn)(model, ids, **kw)
    assert torch.equal(got, expected) and nfe == expected_nfe
