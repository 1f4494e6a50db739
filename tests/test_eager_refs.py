"""Self-consistency of the eager reference samplers (dmkernels/bench/eager/): they leave no
mask, keep the prompt, make the calls and commit the counts their docstrings
say, and agree with each other where their rules coincide."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dmkernels.bench.eager import dream as eager_dream
from dmkernels.bench.eager import fast_dllm as eager_fast
from dmkernels.bench.eager import llada as eager_llada
from dmkernels.bench.eager import policies as eager_policies
from dmkernels.bench.eager._common import linear_counts, ranked
from parity_harness import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 16
MASK = V - 1


class ToyLM(torch.nn.Module):
    """A deterministic stand-in model: bidirectional mixing of the whole input,
    so every logit depends on every token. Records each call's input and kwargs;
    "caches" are the hidden states, just to be sliceable like K/V."""

    def __init__(self, vocab=V, dim=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, dim, generator=g)
        self.pos = torch.randn(256, dim, generator=g)
        self.out = torch.randn(dim, vocab, generator=g) * 2
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, *, past_key_values=None, use_cache=False,
                replace_position=None, replace_range=None):
        self.calls.append(SimpleNamespace(x=input_ids.clone(), attention_mask=attention_mask,
                                          position_ids=position_ids, past_key_values=past_key_values,
                                          use_cache=use_cache, replace_position=replace_position,
                                          replace_range=replace_range))
        h = self.emb[input_ids] + self.pos[: input_ids.shape[1]]
        h = torch.tanh(h + h.mean(1, keepdim=True))
        logits = h @ self.out
        cache = [(h[:, None], h[:, None])] if use_cache else None
        return SimpleNamespace(logits=logits, past_key_values=cache)


def masks_per_call(model, lo, hi, rows=None):
    return [int((c.x[:rows, lo:hi] == MASK).sum()) for c in model.calls]


# ----------------------------------------------------------------------------- helpers


def test_linear_counts():
    m = torch.zeros(2, 10, dtype=torch.bool)
    m[0, :7] = True
    m[1, :] = True
    assert linear_counts(m, 3).tolist() == [[3, 2, 2], [4, 3, 3]]
    assert linear_counts(m, 8).tolist() == [[1] * 7 + [0], [2, 2] + [1] * 6]


def test_ranked_ties_lowest_first():
    s = torch.tensor([0.5, 0.9, 0.5, -math.inf, 0.9, -math.inf])
    e = torch.tensor([True, True, True, True, True, True])
    assert ranked(s, e) == [1, 4, 0, 2, 3, 5]
    assert ranked(s, e, descending=False) == [3, 5, 0, 2, 1, 4]
    assert ranked(s, torch.tensor([False, True, True, False, False, True])) == [1, 2, 5]


# ----------------------------------------------------------------------------- LLaDA


@pytest.mark.parametrize("gen,block,steps", [(8, 8, 8), (12, 4, 6), (6, 3, 2), (10, 5, 4)])
@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_llada_counts_and_prompt(gen, block, steps, cfg):
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (3, 5))
    am = torch.ones_like(prompt)
    am[1, :2] = 0
    prompt[1, :2] = V - 2  # padding
    x = eager_llada.generate(model, prompt, am, steps=steps, gen_length=gen, block_length=block, cfg_scale=cfg,
                             mask_id=MASK)
    assert x.shape == (3, 5 + gen)
    assert torch.equal(x[:, :5], prompt)
    assert not (x == MASK).any()
    assert len(model.calls) == steps
    spb = steps // (gen // block)
    for b in range(gen // block):
        lo = 5 + b * block
        counts = linear_counts(torch.ones(1, block, dtype=torch.bool), spb)[0].tolist()
        seen = masks_per_call(model, lo, lo + block, rows=3)[b * spb:(b + 1) * spb] + [0]
        # every row commits its count at each step (3 rows)
        assert [seen[i] - seen[i + 1] for i in range(spb)] == [3 * c for c in counts]
    for c in model.calls:
        if cfg > 0:
            assert c.x.shape[0] == 6 and torch.equal(c.attention_mask[:3], c.attention_mask[3:])
            assert (c.x[3:, :5] == MASK).all()
        else:
            assert c.x.shape[0] == 3
        assert c.attention_mask.shape[-1] == 5 + gen and (c.attention_mask[:, 5:] == 1).all()


def test_llada_cfg_without_attention_mask():
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (1, 4))
    x = eager_llada.generate(model, prompt, None, steps=4, gen_length=4, block_length=4, cfg_scale=1.0, mask_id=MASK)
    assert not (x == MASK).any() and model.calls[0].attention_mask is None


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_llada_sampling_runs(remasking):
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (2, 3))
    x = eager_llada.generate(model, prompt, steps=4, gen_length=8, block_length=4, temperature=1.0,
                             remasking=remasking, mask_id=MASK)
    assert not (x == MASK).any() and torch.equal(x[:, :3], prompt)


def test_llada_greedy_equals_one_at_a_time_argmax():
    """steps = gen_length, one block: each step commits the single most confident
    masked position; replay that by hand."""
    model = ToyLM(seed=3)
    prompt = torch.randint(0, V - 2, (1, 4))
    x = eager_llada.generate(model, prompt, steps=6, gen_length=6, block_length=6, mask_id=MASK)
    y = torch.cat([prompt, torch.full((1, 6), MASK)], 1)
    for _ in range(6):
        p = torch.softmax(model(y).logits[0], -1)
        conf, tok = p.max(-1)
        conf[y[0] != MASK] = -1
        pos = int(conf.argmax())
        y[0, pos] = tok[pos]
    assert torch.equal(x, y)


class EosModel(torch.nn.Module):
    """V = 126349 logits that prefer EOS (126081) then EoT (126348) at every position,
    then token 7 + position; cheap enough for a few calls."""

    def __init__(self, length):
        super().__init__()
        self.length = length

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.full((B, L, 126349), -20.0)
        logits[:, :, eager_llada.EOS_ID] = 10.0
        logits[:, :, eager_llada.EOT_ID] = 9.0
        logits[:, torch.arange(L), 7 + torch.arange(L)] = 8.0 - 0.1 * torch.arange(L).float()
        return SimpleNamespace(logits=logits)


def test_llada_eos_options():
    prompt = torch.tensor([[1, 2]])
    m = EosModel(6)
    # plain: EOS everywhere
    x = eager_llada.generate(m, prompt, steps=4, gen_length=4, block_length=4, mask_id=126336)
    assert (x[0, 2:] == eager_llada.EOS_ID).all()
    # logits_eos_inf: EoT everywhere
    x = eager_llada.generate(m, prompt, steps=4, gen_length=4, block_length=4, mask_id=126336, logits_eos_inf=True)
    assert (x[0, 2:] == eager_llada.EOT_ID).all()

    # confidence_eos_eot_inf: an EOS/EoT position is committed only after every other one
    class Mixed(EosModel):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids, attention_mask)
            # positions 2 and 3 lose EOS and EoT: they prefer their own token (9, 10)
            out.logits[:, 2:4, eager_llada.EOS_ID] = -30.0
            out.logits[:, 2:4, eager_llada.EOT_ID] = -30.0
            return out

    calls = []

    class Spy(Mixed):
        def forward(self, input_ids, attention_mask=None):
            calls.append(input_ids.clone())
            return super().forward(input_ids, attention_mask)

    x = eager_llada.generate(Spy(6), prompt, steps=4, gen_length=4, block_length=4, mask_id=126336,
                             confidence_eos_eot_inf=True)
    assert x[0, 2:].tolist() == [9, 10, eager_llada.EOS_ID, eager_llada.EOS_ID]
    # positions 2 and 3 (finite confidence) first; then 4 before 5 (ties among -inf: lowest first)
    assert calls[1][0, 2:].tolist() == [9, 126336, 126336, 126336]
    assert calls[2][0, 2:].tolist() == [9, 10, 126336, 126336]
    assert calls[3][0, 2:].tolist() == [9, 10, eager_llada.EOS_ID, 126336]


# ----------------------------------------------------------------------------- Fast-dLLM

FAST = [eager_fast.generate, eager_fast.generate_with_prefix_cache, eager_fast.generate_with_dual_cache]


@pytest.mark.parametrize("fn", FAST)
@pytest.mark.parametrize("gen,block,steps", [(8, 4, 4), (6, 3, 6), (8, 4, 2), (9, 3, 9)])
def test_fast_dllm_fixed_counts(fn, gen, block, steps):
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (2, 4))
    x, nfe = fn(model, prompt, steps=steps, gen_length=gen, block_length=block, mask_id=MASK)
    assert not (x == MASK).any() and torch.equal(x[:, :4], prompt)
    spb = steps // (gen // block)
    assert nfe == len(model.calls) == (gen // block) * min(spb, block)


def test_fast_dllm_cached_call_shapes():
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (2, 4))
    eager_fast.generate_with_prefix_cache(model, prompt, steps=4, gen_length=6, block_length=3, mask_id=MASK)
    shapes = [tuple(c.x.shape) for c in model.calls]
    assert shapes == [(2, 10), (2, 6), (2, 10), (2, 3)]
    assert model.calls[1].past_key_values[0][0].shape[2] == 4 and model.calls[3].past_key_values[0][0].shape[2] == 7
    assert model.calls[0].use_cache and model.calls[1].use_cache
    model.calls.clear()
    eager_fast.generate_with_dual_cache(model, prompt, steps=4, gen_length=6, block_length=3, mask_id=MASK)
    assert [tuple(c.x.shape) for c in model.calls] == [(2, 10), (2, 3), (2, 10), (2, 3)]
    c = model.calls[3]
    assert c.replace_range == (7, 10) and c.replace_position[:, 7:10].all() and c.replace_position.sum() == 6
    assert c.past_key_values[0][0].shape[2] == 10


@pytest.mark.parametrize("fn", FAST)
def test_fast_dllm_one_step_per_block_and_extreme_thresholds(fn):
    prompt = torch.randint(0, V - 2, (2, 4))
    model = ToyLM()
    x, nfe = fn(model, prompt, steps=2, gen_length=6, block_length=3, mask_id=MASK)  # one step per block
    assert nfe == 2 and not (x == MASK).any()
    x, nfe = fn(ToyLM(), prompt, steps=2, gen_length=6, block_length=3, mask_id=MASK, threshold=0.0)
    assert nfe == 2 and not (x == MASK).any()  # every position passes: no wasted call
    x, nfe = fn(ToyLM(), prompt, steps=2, gen_length=6, block_length=3, mask_id=MASK, threshold=1.5)
    assert nfe == 6 and not (x == MASK).any()  # only the top-1 each step
    x, nfe = fn(ToyLM(), prompt, steps=2, gen_length=6, block_length=3, mask_id=MASK, factor=1e9)
    assert nfe == 2  # every position passes


def _factor_commits(conf, factor):
    """Drive eager _step with crafted confidences: one row, eligible everywhere."""
    n = len(conf)
    p = torch.tensor(conf, dtype=torch.float64)
    # logits whose softmax gives probability p_j to token j at position j: put mass p_j on token 0
    logits = torch.full((1, n, 2), 0.0, dtype=torch.float64)
    logits[0, :, 0] = torch.log(p)
    logits[0, :, 1] = torch.log1p(-p)
    x = torch.full((1, n), 9)
    eligible = torch.ones(1, n, dtype=torch.bool)
    _, commit = eager_fast._step(logits, x, eligible, 0.0, "low_confidence", None, None, factor)
    return commit[0].tolist()


def test_fast_dllm_factor_rule_and_quirk():
    # thresholds for ranks 2, 3, 4 at factor 1: 1 - 1/3, 1 - 1/4, 1 - 1/5
    assert _factor_commits([0.99, 0.7, 0.6, 0.55, 0.52], 1.0) == [True, True, False, False, False]
    assert _factor_commits([0.99, 0.9, 0.8, 0.6, 0.55], 1.0) == [True, True, True, False, False]
    # first failure at the last ranked position: the fork commits everything
    assert _factor_commits([0.99, 0.9, 0.8, 0.6], 1.0) == [True, True, True, True]
    assert _factor_commits([0.99, 0.55], 1.0) == [True, True]
    # first failure at rank 2 of 3: only the best
    assert _factor_commits([0.6, 0.99, 0.55], 1.0) == [False, True, False]
    assert _factor_commits([0.6], 1.0) == [True]


def test_fast_dllm_threshold_rule():
    n = 4
    p = torch.tensor([0.3, 0.95, 0.91, 0.5], dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log1p(-p)], -1)[None]
    _, commit = eager_fast._step(logits, torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool),
                                 0.0, "low_confidence", None, 0.9, None)
    assert commit[0].tolist() == [False, True, True, False]
    _, commit = eager_fast._step(logits, torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool),
                                 0.0, "low_confidence", None, 0.99, None)
    assert commit[0].tolist() == [False, True, False, False]


def test_fast_dllm_no_cache_greedy_matches_llada():
    """Fixed counts at T = 0: Fast-dLLM (float64 confidence) and LLaDA (float32)
    rank the same on this model."""
    prompt = torch.randint(0, V - 2, (2, 4))
    a = eager_llada.generate(ToyLM(seed=5), prompt, steps=6, gen_length=8, block_length=4, mask_id=MASK)
    b, _ = eager_fast.generate(ToyLM(seed=5), prompt, steps=6, gen_length=8, block_length=4, mask_id=MASK)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- Dream


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps", [1, 3, 8, 12])
def test_dream_finishes(alg, steps):
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (3, 4))
    am = torch.ones_like(prompt)
    am[2, :1] = 0
    out = eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=steps, alg=alg, max_new_tokens=8,
                                         attention_mask=am, return_dict_in_generate=True, output_history=True)
    assert out.sequences.shape == (3, 12) and torch.equal(out.sequences[:, :4], prompt)
    assert not (out.sequences == MASK).any()
    assert len(model.calls) == steps and len(out.history) == steps
    c = model.calls[0]
    assert c.attention_mask.shape == (3, 1, 12, 12) and c.attention_mask.dtype == torch.bool
    assert c.position_ids[2].tolist() == [1] + list(range(11)) and c.position_ids[0].tolist() == list(range(12))
    # non-origin algs commit the same count in every row
    if alg != "origin":
        for h in out.history:
            per_row = (h == MASK).sum(1)
            assert (per_row == per_row[0]).all()


def test_dream_full_mask_and_lengths():
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (1, 3))
    x = eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=4, alg="maskgit_plus",
                                       attention_mask=torch.ones_like(prompt))
    assert x.shape == (1, 23) and model.calls[0].attention_mask == "full" and model.calls[0].position_ids is None
    x = eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=4, alg="maskgit_plus", max_length=9)
    assert x.shape == (1, 9)
    with pytest.raises(ValueError):
        eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=4, max_length=3)


def test_dream_transfer_counts():
    """k = int(m * (1 - s/t)) on float32 timesteps; the last step takes the rest."""
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (2, 2))
    steps, n, eps = 5, 10, 1e-3
    out = eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=steps, alg="entropy",
                                         max_new_tokens=n, eps=eps, return_dict_in_generate=True,
                                         output_history=True)
    ts = torch.linspace(1, eps, steps + 1)
    left = n
    for i, h in enumerate(out.history):
        k = int(torch.tensor(float(left)) * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else left
        left -= k
        assert int((h[0] == MASK).sum()) == left


def test_dream_hooks():
    model = ToyLM()
    prompt = torch.randint(0, V - 2, (1, 2))
    seen = []

    def tokens_hook(step, x, logits):
        seen.append(("t", step, logits is None))
        return x

    def logits_hook(step, x, logits):
        seen.append(("l", step))
        return logits

    eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=2, alg="origin", max_new_tokens=3,
                                   generation_tokens_hook_func=tokens_hook, generation_logits_hook_func=logits_hook)
    assert seen == [("t", None, True), ("l", 0), ("t", 0, False), ("l", 1), ("t", 1, False)]


def test_dream_logits_shift():
    """Greedy maskgit_plus at one position per step uses the logits of the row
    before each position."""
    model = ToyLM(seed=2)
    prompt = torch.randint(0, V - 2, (1, 3))
    x = eager_dream.diffusion_generate(model, prompt, mask_token_id=MASK, steps=4, alg="maskgit_plus",
                                       max_new_tokens=4, eps=0.5)
    y = torch.cat([prompt, torch.full((1, 4), MASK)], 1)
    ts = torch.linspace(1, 0.5, 5)
    for i in range(4):
        logits = model(y).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        conf, tok = torch.softmax(logits[0], -1).max(-1)
        m = y[0] == MASK
        k = int(torch.tensor(float(m.sum())) * (1 - ts[i + 1] / ts[i])) if i < 3 else int(m.sum())
        conf[~m] = -math.inf
        for pos in ranked(conf, m)[:k]:
            y[0, pos] = tok[pos]
    assert torch.equal(x, y)


def test_dream_top_p_top_k_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    low = torch.finfo(torch.float32).min
    p = torch.softmax(logits, -1)[0]
    kept = eager_dream.top_p_filter(logits, float(p[0] + p[1]) - 1e-4)[0]
    assert kept[:2].tolist() == [3.0, 2.0] and (kept[2:] == low).all()
    kept = eager_dream.top_p_filter(logits, 0.01)[0]
    assert kept[0] == 3.0 and (kept[1:] == low).all()
    kept = eager_dream.top_k_filter(logits, 3)[0]
    assert kept[:3].tolist() == [3.0, 2.0, 1.0] and (kept[3:] == low).all()


# ----------------------------------------------------------------------------- EB-Sampler, DUS


@pytest.mark.parametrize("error", ["entropy", "confidence", "margin"])
def test_entropy_bounded_extremes(error):
    prompt = torch.randint(0, V - 2, (2, 3))
    am = torch.ones_like(prompt)
    am[1, 0] = 0
    x, nfe = eager_policies.generate_entropy_bounded(ToyLM(), prompt, am, gen_length=8, block_length=4, gamma=0.0,
                                                     error=error, mask_id=MASK)
    assert nfe == 8 and not (x == MASK).any() and torch.equal(x[:, :3], prompt)
    x, nfe = eager_policies.generate_entropy_bounded(ToyLM(), prompt, am, gen_length=8, block_length=4,
                                                     gamma=1e9, error=error, mask_id=MASK)
    assert nfe == 2 and not (x == MASK).any()
    x, nfe = eager_policies.generate_entropy_bounded(ToyLM(), prompt, am, gen_length=8, block_length=4,
                                                     gamma=0.5, error=error, mask_id=MASK, temperature=1.0)
    assert 2 <= nfe <= 8 and not (x == MASK).any()


def test_entropy_bounded_gamma_zero_matches_llada_one_per_step():
    """error='confidence', gamma 0: one position per step, the most confident: LLaDA with steps = gen_length."""
    prompt = torch.randint(0, V - 2, (1, 3))
    a, _ = eager_policies.generate_entropy_bounded(ToyLM(seed=4), prompt, gen_length=6, block_length=3, gamma=0.0,
                                                   error="confidence", mask_id=MASK)
    b = eager_llada.generate(ToyLM(seed=4), prompt, steps=6, gen_length=6, block_length=3, mask_id=MASK)
    assert torch.equal(a, b)


@pytest.mark.parametrize("block,base", [(8, 2), (12, 2), (9, 3), (5, 2), (1, 2), (16, 4), (32, 2)])
def test_dilated_groups_match_dmkernels(block, base):
    import dmkernels

    assert eager_policies.dilated_groups(block, base) == dmkernels.dilated_groups(block, base).tolist()


@pytest.mark.parametrize("block,base", [(8, 2), (12, 2), (9, 3), (4, 2)])
def test_dilated_calls(block, base):
    prompt = torch.randint(0, V - 2, (2, 3))
    model = ToyLM()
    x, nfe = eager_policies.generate_dilated(model, prompt, gen_length=2 * block, block_length=block, base=base,
                                             mask_id=MASK)
    groups = eager_policies.dilated_groups(block, base)
    assert nfe == 2 * (max(groups) + 1) and not (x == MASK).any()
    # step i of a block commits exactly group i
    left = masks_per_call(model, 3, 3 + block)[: max(groups) + 1] + [0]
    assert [left[i] - left[i + 1] for i in range(len(left) - 1)] == [2 * groups.count(g) for g in range(max(groups) + 1)]


def test_dilated_remask_threshold():
    prompt = torch.randint(0, V - 2, (2, 3))
    x, nfe = eager_policies.generate_dilated(ToyLM(), prompt, gen_length=8, block_length=8, remask_threshold=2.0,
                                             mask_id=MASK)
    assert nfe == 8 and not (x == MASK).any()  # nothing passes: one (the best selected) per step
    x0, n0 = eager_policies.generate_dilated(ToyLM(), prompt, gen_length=8, block_length=8, remask_threshold=0.0,
                                             mask_id=MASK)
    x1, n1 = eager_policies.generate_dilated(ToyLM(), prompt, gen_length=8, block_length=8, mask_id=MASK)
    assert torch.equal(x0, x1) and n0 == n1 == 3  # groups of strides 4, 2, 1
