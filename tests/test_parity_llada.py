"""dmkernels.compat.llada.generate against the eager LLaDA reference (dmkernels/bench/eager/llada.py):
identical tokens at temperature 0, the same distribution when sampling."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dmkernels.bench.eager import llada as eager
from parity_harness import (
    assert_different_distribution,
    assert_same_distribution,
    large,  # noqa: F401  (fixture)
    one_thread,  # noqa: F401  (fixture)
    llada_like_model,
    prompts,
    tiny_model,
)

ours = pytest.importorskip("dmkernels.compat.llada")

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
MASK = V - 1

SHAPES = [  # (gen_length, block_length, steps)
    (8, 8, 8),
    (12, 4, 6),
    (10, 5, 2),   # one step per block
    (9, 3, 9),
    (16, 8, 4),
    (6, 6, 4),    # counts 2, 2, 1, 1
]


def _batch(B):
    if B == 1:
        return prompts(1, 5, V, seed=1)
    return prompts(3, 6, V, pads=(0, 2, 4), seed=2)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "g{}b{}s{}".format(*s))
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_greedy_identical(B, shape, cfg_scale):
    gen, block, steps = shape
    model = tiny_model(V)
    ids, am = _batch(B)
    kw = dict(steps=steps, gen_length=gen, block_length=block, cfg_scale=cfg_scale, mask_id=MASK)
    expected = eager.generate(model, ids, am, **kw)
    got = ours.generate(model, ids, am, **kw)
    assert torch.equal(got, expected)
    assert not (got == MASK).any()


class _EosHeavy(torch.nn.Module):
    """A LLaDA-vocabulary model whose logits make EOS the argmax at positions
    0, 3, 6, ... and EoT at 1, 4, 7, ... (a large bonus), so the EOS options
    matter. Passes every keyword through."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    @property
    def device(self):
        return self.inner.device

    def forward(self, x, **kwargs):
        out = self.inner(x, **kwargs)
        logits = out.logits
        pos = torch.arange(x.shape[1])
        logits[:, pos % 3 == 0, eager.EOS_ID] += 30.0
        logits[:, pos % 3 == 1, eager.EOT_ID] += 30.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("logits_eos_inf", [False, True])
@pytest.mark.parametrize("confidence_eos_eot_inf", [False, True])
@pytest.mark.parametrize("B", [1, 3])
def test_eos_options_llada_vocabulary(logits_eos_inf, confidence_eos_eot_inf, B):
    model = _EosHeavy(llada_like_model())
    V_llada = 126464
    if B == 1:
        ids, am = prompts(1, 4, V_llada, seed=3)
    else:
        ids, am = prompts(3, 4, V_llada, pads=(0, 1, 3), pad_id=eager.EOS_ID, seed=4)
    kw = dict(steps=4, gen_length=6, block_length=3, mask_id=126336, logits_eos_inf=logits_eos_inf,
              confidence_eos_eot_inf=confidence_eos_eot_inf)
    expected = eager.generate(model, ids, am, **kw)
    got = ours.generate(model, ids, am, **kw)
    assert torch.equal(got, expected)
    if logits_eos_inf:
        assert not (got[:, 4:] == eager.EOS_ID).any()


def test_random_remasking_greedy_tokens_finish():
    """remasking='random' at T = 0: the order is random, but every position is filled
    and the prompt kept."""
    model = tiny_model(V)
    ids, am = _batch(3)
    got = ours.generate(model, ids, am, steps=4, gen_length=8, block_length=4, remasking="random", mask_id=MASK)
    assert torch.equal(got[:, :6], ids) and not (got == MASK).any()


# ----------------------------------------------------------------------------- sampling

NV = 12  # tiny vocabulary for the frequency tests (flat logits: many outcomes)
N = 2000  # identical rows per call


def _sample_pair(temperature, remasking="low_confidence", cfg_scale=0.0, eager_temperature=None, gen=2, steps=2):
    model = tiny_model(NV, seed=1, logit_std=2.0)
    ids, _ = prompts(1, 3, NV, seed=5)
    ids = ids.expand(N, -1).contiguous()
    kw = dict(steps=steps, gen_length=gen, block_length=gen, remasking=remasking, cfg_scale=cfg_scale, mask_id=NV - 1)
    got = ours.generate(model, ids, temperature=temperature, **kw)[:, 3:]
    t = temperature if eager_temperature is None else eager_temperature
    expected = eager.generate(model, ids, temperature=t, **kw)[:, 3:]
    return got, expected


@pytest.mark.parametrize("temperature,remasking,cfg_scale,gen", [
    (1.0, "low_confidence", 0.0, 2),
    (0.5, "low_confidence", 0.0, 2),
    (0.0, "random", 0.0, 3),  # only the order is random
    (1.0, "random", 0.0, 2),
    (1.0, "low_confidence", 1.0, 2),
])
def test_sampling_same_distribution(temperature, remasking, cfg_scale, gen):
    got, expected = _sample_pair(temperature, remasking, cfg_scale, gen=gen, steps=gen)
    assert_same_distribution(got, expected)


def test_frequency_test_catches_twice_the_temperature():
    got, expected = _sample_pair(1.0, eager_temperature=2.0)
    assert_different_distribution(got, expected)


def test_same_seed_same_tokens():
    model = tiny_model(V)
    ids, am = _batch(3)
    kw = dict(steps=4, gen_length=8, block_length=4, temperature=1.0, mask_id=MASK)
    torch.manual_seed(7)
    a = ours.generate(model, ids, am, **kw)
    torch.manual_seed(7)
    b = ours.generate(model, ids, am, **kw)
    torch.manual_seed(8)
    c = ours.generate(model, ids, am, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- LLaDA-size (opt-in)


@pytest.mark.parametrize("shape", [(64, 32, 32), (32, 32, 32)], ids=lambda s: "g{}b{}s{}".format(*s))
def test_greedy_identical_llada_vocabulary(large, shape):
    gen, block, steps = shape
    model = llada_like_model()
    ids, am = prompts(2, 16, 126464, pads=(0, 5), pad_id=eager.EOS_ID, seed=6)
    kw = dict(steps=steps, gen_length=gen, block_length=block, mask_id=126336)
    assert torch.equal(ours.generate(model, ids, am, **kw), eager.generate(model, ids, am, **kw))
