"""The eager reference of SDAR's block_diffusion_generate (dmkernels/bench/eager/sdar.py)
on the tiny SDAR model: every strategy fills the canvas (greedy and sampling),
commits what its rule says and nothing else, makes SDAR's model calls, stops
on stop ids as the public code does, and its cached run equals an uncached
recomputation in float64."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dmkernels.bench.eager import sdar as eager
from dmkernels.bench.eager._common import ranked
from dmkernels.models import SDARForBlockDiffusion, sdar_tiny_config
from parity_harness import assert_different_distribution, assert_same_distribution, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

V = 512
MASK = V - 1
STRATEGIES = eager.STRATEGIES
KW = dict(confidence_threshold=0.5, eb_threshold=1.0)


def build(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    return SDARForBlockDiffusion(sdar_tiny_config(V, **overrides)).eval().to(dtype)


class Recorder(torch.nn.Module):
    """Passes calls to ``inner`` and records, per call, the input tokens, the
    cache length before the call, ``store_kv`` and the logits."""

    def __init__(self, inner, logits_hook=None):
        super().__init__()
        self.inner = inner
        self.hook = logits_hook
        self.calls = []

    def forward(self, input_ids, **kw):
        cache = kw.get("past_key_values")
        before = None if cache is None else cache.get_seq_length()
        out = self.inner(input_ids, **kw)
        if self.hook is not None:
            out.logits = self.hook(input_ids, out.logits)
        self.calls.append(SimpleNamespace(x=input_ids.clone(), cached=before, store_kv=kw.get("store_kv"),
                                          mask=kw.get("attention_mask"), positions=kw.get("position_ids"),
                                          logits=out.logits.clone()))
        return out


def prompt_ids(length, seed=3, batch=1):
    return torch.randint(0, V - 2, (batch, length), generator=torch.Generator().manual_seed(seed))


def run(model, ids, **kw):
    args = dict(gen_length=12, block_length=4, denoising_steps=4, temperature=0.0, **KW)
    args.update(kw)
    return eager.block_diffusion_generate(model, {"input_ids": ids}, MASK, **args)


def canvas_len(P, gen, bl):
    return math.ceil((P + gen) / bl) * bl


# ----------------------------------------------------------------------------- helpers


def test_transfer_counts():
    assert eager.transfer_counts(8, 3) == [3, 3, 2]
    assert eager.transfer_counts(4, 6) == [1, 1, 1, 1, 0, 0]
    assert eager.transfer_counts(4, 4) == [1, 1, 1, 1]


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.5, -1.0]])
    k2 = eager._top_k(logits, 2)  # ties with the 2nd value are kept
    assert torch.isfinite(k2).tolist() == [[True, True, True, False, False]]
    p = torch.softmax(logits, -1)[0]
    # Keep tokens until the cumulative probability first exceeds top_p (that one included).
    for top_p, kept in [(0.1, 1), (float(p[0]) + 1e-4, 2), (float(p[:3].sum()) + 1e-4, 4), (0.0, 1)]:
        assert int(torch.isfinite(eager._top_p(logits, top_p)).sum()) == kept, top_p


# ----------------------------------------------------------------------------- filling, invariants


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("P,gen,bl,steps", [(6, 12, 4, 4), (8, 9, 4, 3), (3, 10, 5, 7), (4, 8, 4, 1)])
def test_fills_canvas_and_never_overwrites(strategy, temperature, P, gen, bl, steps):
    torch.manual_seed(7)
    model = Recorder(build())
    ids = prompt_ids(P)
    out = run(model, ids, gen_length=gen, block_length=bl, denoising_steps=steps, temperature=temperature,
              remasking_strategy=strategy, top_k=20 if temperature else 0, top_p=0.9 if temperature else 1.0)
    T = canvas_len(P, gen, bl)
    assert out.shape == (1, T) and out.dtype == torch.long
    assert torch.equal(out[:, :P], ids) and not (out == MASK).any()
    # Within a block, a position that is not a mask in one call keeps its token in
    # every later call (prompt tokens of the first block included).
    first = P // bl
    for call, nxt in zip(model.calls, model.calls[1:]):
        if call.store_kv or call.x.shape != nxt.x.shape:
            continue
        fixed = call.x != MASK
        assert torch.equal(nxt.x[fixed], call.x[fixed])
    first_block = [c for c in model.calls if c.cached == first * bl and c.x.shape[1] == bl]
    if P % bl:
        assert all(torch.equal(c.x[0, : P % bl], ids[0, first * bl:]) for c in first_block)
    # The final store_kv call of each block carries the block's final tokens.
    stores = [c for c in model.calls if c.store_kv and c.x.shape[1] == bl and c.cached >= first * bl]
    assert torch.cat([c.x for c in stores], dim=1).equal(out[:, first * bl:])


def test_model_calls_follow_sdar():
    """Prefill of the full prompt blocks, then per block: store_kv=False steps on
    the block (3-D float 0/1 mask over the cache and the block, the block's
    positions) and one store_kv=True call once it is full."""
    model = Recorder(build())
    P, bl = 8, 4
    run(model, prompt_ids(P), gen_length=10, block_length=bl, denoising_steps=4,
        remasking_strategy="low_confidence_static")
    prefill = model.calls[0]
    assert prefill.store_kv is True and prefill.cached == 0 and prefill.x.shape == (1, 8)
    assert prefill.mask.shape == (1, 8, 8) and prefill.mask.dtype == torch.float32
    blocks = (P + 10 + bl - 1) // bl
    rest = model.calls[1:]
    assert len(rest) == (blocks - 2) * (4 + 1)  # static commits 1 per step: 4 steps + the store call per block
    for i, call in enumerate(rest):
        block = 2 + i // 5
        s, e = block * bl, (block + 1) * bl
        assert call.cached == s and call.x.shape == (1, bl)
        assert call.store_kv is (i % 5 == 4)
        assert call.positions.tolist() == [list(range(s, e))]
        want = (torch.arange(e)[None, :] // bl <= torch.arange(s, e)[:, None] // bl).float()
        assert torch.equal(call.mask[0], want)


# ----------------------------------------------------------------------------- the rules


def denoising_steps_of(model, bl):
    """Per block: the list of store_kv=False calls (input tokens and logits) and
    the block's final tokens (from its store_kv=True call)."""
    blocks, current = [], []
    for call in model.calls:
        if call.x.shape[1] != bl:
            continue
        if call.store_kv:
            if current:  # not the prefill: a generated block always starts with masks
                blocks.append((current, call.x[0]))
            current = []
        else:
            current.append(call)
    return blocks


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [2, 4, 6])
def test_greedy_commits_follow_the_rule(strategy, steps):
    bl = 6
    model = Recorder(build(seed=1))
    run(model, prompt_ids(5, seed=4), gen_length=16, block_length=bl, denoising_steps=steps,
        remasking_strategy=strategy, confidence_threshold=0.4, eb_threshold=0.8)
    counts = eager.transfer_counts(bl, steps)
    checked = 0
    for calls, final in denoising_steps_of(model, bl):
        for i, call in enumerate(calls):
            after = calls[i + 1].x[0] if i + 1 < len(calls) else final
            masked = call.x[0] == MASK
            committed = masked & (after != MASK)
            assert not (after != call.x[0])[~masked].any()
            probs = torch.softmax(call.logits[0], -1)
            token = call.logits[0].argmax(-1)
            conf = probs.gather(-1, token[:, None])[:, 0]
            assert torch.equal(after[committed], token[committed])  # greedy: the argmax is committed
            n, m = (counts[i] if i < len(counts) else 0), int(masked.sum())
            if strategy == "sequential":
                want = [int(p) for p in masked.nonzero().flatten()[:n]]
            elif strategy == "low_confidence_static":
                want = ranked(conf, masked)[: min(n, m)]
            elif strategy == "low_confidence_dynamic":
                high = masked & (conf > 0.4)
                want = high.nonzero().flatten().tolist() if int(high.sum()) >= n else ranked(conf, masked)[: min(n, m)]
            else:
                entropy = torch.special.entr(probs).sum(-1)
                order = ranked(entropy, masked, descending=False)
                k = 0
                while k < len(order) and float(entropy[order[: k + 1]].sum()) < 0.8:
                    k += 1
                want = order[: max(1, min(k, m))]
            assert sorted(committed.nonzero().flatten().tolist()) == sorted(want), (strategy, i)
            checked += 1
    assert checked >= 3


def test_entropy_bounded_extremes():
    """A tiny bound commits one position per step (the clamp to 1); a huge one
    fills a block in one step. Blocks always end full (the public loop could
    leave masks after denoising_steps + 1 calls)."""
    bl = 4
    for eb, per_block in [(1e-9, bl), (1e9, 1)]:
        model = Recorder(build())
        out = run(model, prompt_ids(4), gen_length=12, block_length=bl, denoising_steps=1,
                  remasking_strategy="entropy_bounded", eb_threshold=eb)
        assert not (out == MASK).any()
        assert [len(calls) for calls, _ in denoising_steps_of(model, bl)] == [per_block] * 3


# ----------------------------------------------------------------------------- randomness


def test_greedy_draws_no_random_numbers_and_sampling_is_seeded():
    model = build()
    ids = prompt_ids(5)
    state = torch.random.get_rng_state()
    run(model, ids, temperature=0.0)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(11)
    a = run(model, ids, temperature=1.0, remasking_strategy="low_confidence_static")
    torch.manual_seed(11)
    b = run(model, ids, temperature=1.0, remasking_strategy="low_confidence_static")
    torch.manual_seed(12)
    c = run(model, ids, temperature=1.0, remasking_strategy="low_confidence_static")
    assert torch.equal(a, b) and not torch.equal(a, c)


def one_token_draws(model, ids, n, **kw):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        x = run(model, ids, gen_length=1, block_length=1, denoising_steps=1, remasking_strategy="sequential", **kw)
        out.append(x[:, -1:])
    return torch.cat(out)


def test_sampling_distribution():
    """One masked position: the sampled token follows softmax(logits / T) after
    top-k and top-p, as the public sampler draws it."""
    model = build()
    ids = prompt_ids(4)
    # Blocks of one token: attention is causal.
    logits = model(torch.cat([ids, torch.tensor([[MASK]])], 1), attention_mask=torch.tril(torch.ones(5, 5))[None])
    logits = logits.logits[0, -1]
    ours = one_token_draws(model, ids, 500, temperature=1.5, top_k=6, top_p=0.9)
    filtered = eager._top_p(eager._top_k(logits[None] / 1.5, 6), 0.9)[0]
    support = torch.isfinite(filtered).nonzero().flatten().tolist()
    assert 3 <= len(support) < 6  # top-p removed some of the top 6 and left several
    g = torch.Generator().manual_seed(99)
    direct = torch.multinomial(torch.softmax(filtered, -1), 500, replacement=True, generator=g)[:, None]
    assert set(ours.flatten().tolist()) <= set(support)
    assert_same_distribution(ours, direct)
    assert_different_distribution(ours, one_token_draws(model, ids, 500, temperature=3.0, top_k=6, top_p=0.9))


# ----------------------------------------------------------------------------- stopping, batches, cache


def test_stop_ids_end_generation_after_the_block():
    bl = 4
    model = build()
    ids = prompt_ids(5)
    full = run(model, ids, gen_length=20, block_length=bl)
    P, T = 5, canvas_len(5, 20, bl)
    # A stop id the model produces, first seen in a later block.
    gen_part = full[0, P:].tolist()
    stop = next(t for i, t in enumerate(gen_part) if (P + i) // bl >= 3 and t not in gen_part[: i])
    block = (P + gen_part.index(stop)) // bl
    unused = next(t for t in range(V - 2) if t not in gen_part)
    for stops in ([stop], stop, [unused, stop]):
        out = run(model, ids, gen_length=20, block_length=bl, stopping_criteria_idx=stops)
        assert out.shape == (1, T)
        assert torch.equal(out[:, : (block + 1) * bl], full[:, : (block + 1) * bl])
        assert (out[:, (block + 1) * bl:] == MASK).all()
    # Stop ids in the prompt only do not stop generation (the search starts at P).
    prompt_only = next(t for t in ids[0].tolist() if t not in gen_part)
    assert torch.equal(run(model, ids, gen_length=20, block_length=bl, stopping_criteria_idx=[prompt_only]), full)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cached_equals_uncached_float64_greedy(strategy):
    model = Recorder(build(torch.float64, attention_bias=True))
    ref = Recorder(build(torch.float64, attention_bias=True))
    for P, bl, steps in [(6, 4, 3), (8, 4, 4), (2, 5, 2)]:
        model.calls.clear()
        ref.calls.clear()
        ids = prompt_ids(P, seed=P)
        kw = dict(gen_length=14, block_length=bl, denoising_steps=steps, temperature=0.0,
                  remasking_strategy=strategy, confidence_threshold=0.4, eb_threshold=0.9)
        cached = eager.block_diffusion_generate(model, {"input_ids": ids}, MASK, **kw)
        uncached = eager.block_diffusion_generate_uncached(ref, {"input_ids": ids}, MASK, **kw)
        assert torch.equal(cached, uncached)
        # The uncached run recomputes whole windows: same tokens from other calls.
        steps_cached = [c for c in model.calls if c.store_kv is False]
        assert len(steps_cached) == len(ref.calls) and all(c.cached is None for c in ref.calls)
        for a, b in zip(steps_cached, ref.calls):
            torch.testing.assert_close(a.logits, b.logits[:, -bl:], atol=1e-12, rtol=0)


def test_batch_rows_are_generated_alone():
    model = build()
    ids = prompt_ids(6, batch=3)
    kw = dict(gen_length=10, block_length=4, denoising_steps=4, remasking_strategy="low_confidence_dynamic")
    out = run(model, ids, **kw)
    alone = torch.cat([run(model, ids[r:r + 1], **kw) for r in range(3)])
    assert torch.equal(out, alone)
    # Left padding (an extension: the public code ignores the mask): a padded row
    # is its unpadded prompt generated alone, after its pads, then mask_id.
    keep = torch.ones(3, 6, dtype=torch.long)
    keep[1, :2] = 0
    keep[2, :5] = 0
    padded = eager.block_diffusion_generate(model, {"input_ids": ids, "attention_mask": keep}, MASK,
                                            temperature=0.0, **KW, **kw)
    rows = [run(model, ids[r:r + 1, int((keep[r] == 0).sum()):], **kw)[0] for r in range(3)]
    width = max(int((keep[r] == 0).sum()) + len(rows[r]) for r in range(3))
    assert padded.shape == (3, width)
    for r in range(3):
        p = int((keep[r] == 0).sum())
        assert torch.equal(padded[r, :p], ids[r, :p])
        assert torch.equal(padded[r, p:p + len(rows[r])], rows[r])
        assert (padded[r, p + len(rows[r]):] == MASK).all()


def test_errors_before_any_model_call():
    model = Recorder(build())
    ids = prompt_ids(4)
    cases = [
        (dict(remasking_strategy="random"), ValueError, "remasking_strategy"),
        (dict(remasking_strategy="entropy_bounded", eb_threshold=None), ValueError, "eb_threshold"),
        (dict(denoising_steps=0), ValueError, "denoising_steps"),
        (dict(block_length=0), ValueError, "block_length"),
    ]
    for kw, exc, name in cases:
        args = dict(KW)
        args.update(kw)
        with pytest.raises(exc, match=name):
            eager.block_diffusion_generate(model, {"input_ids": ids}, MASK, **args)
    with pytest.raises(TypeError, match="prompt"):
        eager.block_diffusion_generate(model, ids, MASK)
    assert model.calls == []


def test_model_that_predicts_the_mask_raises():
    """A model whose argmax at one position is always mask_id: that position
    stays masked; when the schedule is exhausted the reference raises (the
    public code: IndexError)."""
    def force_mask(input_ids, logits):
        logits = logits.clone()
        logits[:, 0, MASK] = 1e4
        return logits

    model = Recorder(build(suppress_mask_logit=False), logits_hook=force_mask)
    with pytest.raises(RuntimeError, match="sampled mask_id"):
        run(model, prompt_ids(4), remasking_strategy="low_confidence_static")
    assert len(model.calls) == 1 + 4  # prefill + the 4 scheduled steps of the first block
