"""dmkernels.compat.dream against the eager Dream reference (dmkernels/bench/eager/dream.py):
identical tokens at temperature 0 with a ranking alg, the same distribution when
sampling (temperature, alg 'origin', alg_temp)."""
from __future__ import annotations

import warnings

import pytest
import torch

from dmkernels.bench.eager import dream as eager
from parity_harness import (
    assert_different_distribution,
    assert_same_distribution,
    one_thread,  # noqa: F401  (fixture)
    prompts,
    tiny_model,
)

ours = pytest.importorskip("dmkernels.compat.dream")

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
MASK = V - 1


def _batch(B):
    if B == 1:
        return prompts(1, 5, V, seed=21)
    return prompts(3, 6, V, pads=(0, 2, 4), seed=22)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps,gen", [(1, 6), (3, 8), (8, 8), (12, 7), (5, 9)])
def test_greedy_identical(B, alg, steps, gen):
    model = tiny_model(V)
    ids, am = _batch(B)
    kw = dict(mask_token_id=MASK, steps=steps, alg=alg, max_new_tokens=gen, attention_mask=am)
    expected = eager.diffusion_generate(model, ids, **kw)
    got = ours.diffusion_generate(model, ids, **kw)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("filters", [{"top_p": 0.9}, {"top_k": 3}, {"top_p": 0.5, "top_k": 2}, {"top_p": 1.0}],
                         ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()))
def test_greedy_identical_with_top_p_top_k(alg, filters):
    """At T = 0 the filters do not change the argmax but do change the margin and the
    entropy that rank the positions."""
    model = tiny_model(V)
    ids, am = _batch(3)
    kw = dict(mask_token_id=MASK, steps=4, alg=alg, max_new_tokens=8, attention_mask=am, **filters)
    assert torch.equal(ours.diffusion_generate(model, ids, **kw), eager.diffusion_generate(model, ids, **kw))


def test_history_and_return_dict():
    model = tiny_model(V)
    ids, am = _batch(3)
    kw = dict(mask_token_id=MASK, steps=5, alg="entropy", max_new_tokens=8, attention_mask=am,
              return_dict_in_generate=True, output_history=True)
    expected = eager.diffusion_generate(model, ids, **kw)
    got = ours.diffusion_generate(model, ids, **kw)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.history) == len(expected.history) == 5
    for a, b in zip(got.history, expected.history):
        assert torch.equal(a, b)
    kw["output_history"] = False
    assert ours.diffusion_generate(model, ids, **kw).history is None


def test_hooks():
    """A tokens hook that fixes a token and a logits hook that favours one token:
    both implementations call them at the same places with the same arguments."""
    model = tiny_model(V)
    ids, am = _batch(3)
    P = ids.shape[1]

    def make_hooks(log):
        def tokens_hook(step, x, logits):
            log.append(("tokens", step, x.clone(), None if logits is None else logits.clone()))
            if step == 0:
                x = x.clone()
                x[:, P + 2] = 7
            return x

        def logits_hook(step, x, logits):
            log.append(("logits", step, x.clone(), logits.clone()))
            logits = logits.clone()
            logits[:, :, 11] += 2.0 * (step + 1)
            return logits

        return dict(generation_tokens_hook_func=tokens_hook, generation_logits_hook_func=logits_hook)

    kw = dict(mask_token_id=MASK, steps=4, alg="maskgit_plus", max_new_tokens=8, attention_mask=am)
    log_e, log_o = [], []
    expected = eager.diffusion_generate(model, ids, **kw, **make_hooks(log_e))
    got = ours.diffusion_generate(model, ids, **kw, **make_hooks(log_o))
    assert torch.equal(got, expected)
    assert [(k, s) for k, s, *_ in log_o] == [(k, s) for k, s, *_ in log_e]
    for (_, _, xo, lo), (_, _, xe, le) in zip(log_o, log_e):
        assert torch.equal(xo, xe)
        assert (lo is None) == (le is None)
        if lo is not None:
            torch.testing.assert_close(lo, le, rtol=0, atol=0)


def test_lengths_and_patch():
    model = tiny_model(V)
    ids, _ = _batch(1)
    P = ids.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = ours.diffusion_generate(model, ids, mask_token_id=MASK, steps=4, alg="maskgit_plus")
    assert default.shape == (1, P + 20)
    assert torch.equal(default, eager.diffusion_generate(model, ids, mask_token_id=MASK, steps=4, alg="maskgit_plus"))
    kw = dict(mask_token_id=MASK, steps=3, alg="topk_margin", max_length=P + 6)
    got = ours.diffusion_generate(model, ids, **kw)
    assert got.shape == (1, P + 6) and torch.equal(got, eager.diffusion_generate(model, ids, **kw))
    kw = dict(mask_token_id=MASK, steps=3, alg="topk_margin", max_length=P + 6, max_new_tokens=4)
    assert ours.diffusion_generate(model, ids, **kw).shape == (1, P + 4)
    with pytest.raises(ValueError):
        ours.diffusion_generate(model, ids, mask_token_id=MASK, steps=3, max_length=P)

    from dmkernels.models import DiffusionLM, tiny_config

    torch.manual_seed(0)
    fresh = ours.patch(DiffusionLM(tiny_config(vocab_size=V)).eval())
    kw = dict(mask_token_id=MASK, steps=4, alg="entropy", max_new_tokens=6)
    assert torch.equal(fresh.diffusion_generate(ids, **kw), eager.diffusion_generate(fresh, ids, **kw))


def test_all_masks_filled():
    model = tiny_model(V)
    ids, am = _batch(3)
    for alg in ("origin", "maskgit_plus"):
        got = ours.diffusion_generate(model, ids, mask_token_id=MASK, steps=3, alg=alg, max_new_tokens=8,
                                      attention_mask=am)
        assert torch.equal(got[:, :6], ids) and not (got[:, 6:] == MASK).all(-1).any()


# ----------------------------------------------------------------------------- sampling

NV = 12
N = 2000


def _sample_pair(eager_temperature=None, gen=2, **kw):
    model = tiny_model(NV, seed=1, logit_std=2.0)
    ids, _ = prompts(1, 3, NV, seed=5)
    ids = ids.expand(N, -1).contiguous()
    kw = dict(mask_token_id=NV - 1, max_new_tokens=gen, **kw)
    got = ours.diffusion_generate(model, ids, **kw)
    if eager_temperature is not None:
        kw["temperature"] = eager_temperature
    expected = eager.diffusion_generate(model, ids, **kw)
    return got[:, 3:], expected[:, 3:]


@pytest.mark.parametrize("kw", [
    dict(alg="origin", steps=3, temperature=0.0, gen=3),
    dict(alg="origin", steps=2, temperature=1.0),
    dict(alg="maskgit_plus", steps=2, temperature=1.0),
    dict(alg="maskgit_plus", steps=2, temperature=0.7, top_k=3),
    dict(alg="topk_margin", steps=3, temperature=0.0, alg_temp=0.5, gen=3),
    dict(alg="entropy", steps=2, temperature=1.0, top_p=0.8),
    dict(alg="maskgit_plus", steps=2, temperature=1.0, alg_temp=0.2),
], ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_sampling_same_distribution(kw):
    got, expected = _sample_pair(**kw)
    assert_same_distribution(got, expected)


def test_frequency_test_catches_twice_the_temperature():
    got, expected = _sample_pair(alg="maskgit_plus", steps=2, temperature=1.0, eager_temperature=2.0)
    assert_different_distribution(got, expected)


def test_same_seed_same_tokens():
    model = tiny_model(V)
    ids, am = _batch(3)
    kw = dict(mask_token_id=MASK, steps=4, alg="origin", temperature=1.0, max_new_tokens=8, attention_mask=am)
    torch.manual_seed(11)
    a = ours.diffusion_generate(model, ids, **kw)
    torch.manual_seed(11)
    b = ours.diffusion_generate(model, ids, **kw)
    assert torch.equal(a, b)


def test_tokens_hook_sees_shifted_logits():
    """Without a logits hook, the tokens hook still gets the shifted logits (row 0
    repeated), as Dream passes them."""
    model = tiny_model(V)
    ids, am = _batch(3)
    seen_e, seen_o = [], []

    def hook(log):
        return lambda step, x, logits: (log.append(None if logits is None else logits.clone()), x)[1]

    kw = dict(mask_token_id=MASK, steps=3, alg="maskgit_plus", max_new_tokens=6, attention_mask=am)
    expected = eager.diffusion_generate(model, ids, generation_tokens_hook_func=hook(seen_e), **kw)
    got = ours.diffusion_generate(model, ids, generation_tokens_hook_func=hook(seen_o), **kw)
    assert torch.equal(got, expected)
    assert len(seen_o) == len(seen_e) == 4 and seen_o[0] is None and seen_e[0] is None
    for lo, le in zip(seen_o[1:], seen_e[1:]):
        assert lo.shape == le.shape
        torch.testing.assert_close(lo, le, rtol=0, atol=0)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_unequal_mask_counts_batch_mean(alg):
    """A tokens hook that fills positions in some rows only: the rows then hold different
    numbers of masks and the per-step count comes from their (fractional) batch mean."""
    model = tiny_model(V)
    ids, am = _batch(3)
    P = ids.shape[1]

    def hook(step, x, logits):
        if step == 0:
            x = x.clone()
            x[0, P + 1] = 9
            x[0, P + 5] = 9
            x[2, P + 3] = 9
        return x

    kw = dict(mask_token_id=MASK, steps=3, alg=alg, max_new_tokens=10, attention_mask=am,
              generation_tokens_hook_func=hook, return_dict_in_generate=True, output_history=True)
    expected = eager.diffusion_generate(model, ids, **kw)
    got = ours.diffusion_generate(model, ids, **kw)
    for a, b in zip(got.history, expected.history):
        assert torch.equal(a, b)
    assert torch.equal(got.sequences, expected.sequences)
