"""dmkernels.compat.sdar.block_diffusion_generate (batched, exact block KV cache,
dmkernels ops) against the eager SDAR reference (dmkernels/bench/eager/sdar.py,
one row at a time, SDAR's DynamicCache + store_kv calls): identical tokens at
temperature 0 for every remasking strategy (float32 and float64), stop ids the
model produces, each row of a padded batch as alone, cached = uncached, one
model call per denoising step on the current block only, no host sync inside a
step, the same distribution when sampling, arguments refused before the first
model call."""
from __future__ import annotations

import math

import pytest
import torch

from dmkernels.bench.eager import sdar as eager
from dmkernels.compat import sdar as ours
from dmkernels.models import DiffusionLM, SDARForBlockDiffusion, sdar_tiny_config, tiny_config
from dmkernels.testing import forbid_host_sync
from parity_harness import assert_different_distribution, assert_same_distribution, one_thread  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:dmkernels. running")]

V = 512
MASK = V - 1
STOP = V - 2
GEN = 11
STRATEGIES = ours.STRATEGIES
# eb 0.6: blocks commit 1 to 3 positions per entropy_bounded step on this model
# (checked by test_strategies_and_bounds_have_power).
KW = dict(confidence_threshold=0.5, eb_threshold=0.6)


def _model(dtype=torch.float32, vocab_size=V, seed=0, **overrides):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = SDARForBlockDiffusion(sdar_tiny_config(vocab_size, **overrides)).eval().to(dtype)
    torch.random.set_rng_state(state)
    return model


MODELS = {torch.float32: _model(torch.float32), torch.float64: _model(torch.float64)}


class Boost(torch.nn.Module):
    """The model with ``boost`` added to ``token``'s logit at the given row-relative
    positions (read from ``position_ids``, so it works on any window: the eager
    calls, a cached block, a re-laid batch). Passes every keyword through; records
    each call's query width and ``store_kv``."""

    def __init__(self, inner, positions=(), boost=20.0, token=STOP):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.positions = torch.tensor(list(positions), dtype=torch.int64)
        self.boost = boost
        self.token = token
        self.widths = []
        self.store_kv = []

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        self.widths.append(input_ids.shape[1])
        self.store_kv.append(kwargs.get("store_kv"))
        out = self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        if len(self.positions):
            pos = position_ids.expand(input_ids.shape[0], -1)[:, -out.logits.shape[1]:]
            out.logits[..., self.token] += self.boost * torch.isin(pos, self.positions)
        return out


def prompt(n, seed=0, batch=1):
    return torch.randint(0, V - 2, (batch, n), generator=torch.Generator().manual_seed(seed))


def both(model, ids, keep=None, **kw):
    """(eager, ours) for one setting."""
    p = {"input_ids": ids} if keep is None else {"input_ids": ids, "attention_mask": keep}
    args = dict(gen_length=GEN, temperature=0.0, **KW)
    args.update(kw)
    return eager.block_diffusion_generate(model, p, MASK, **args), ours.block_diffusion_generate(model, p, MASK, **args)


# ----------------------------------------------------------------------------- greedy, B = 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bl", [4, 8])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_greedy_identical(dtype, bl, strategy):
    """Every denoising_steps in {1, 3, bl}, prompts ending off (6) and on (8) a block
    boundary; the whole canvas (prompt included) must match."""
    model = MODELS[dtype]
    for steps in (1, 3, bl):
        for P in (6, 8):
            ids = prompt(P, seed=steps + P)
            expected, got = both(model, ids, block_length=bl, denoising_steps=steps, remasking_strategy=strategy)
            assert torch.equal(got, expected), (steps, P)
            assert got.shape == (1, math.ceil((P + GEN) / bl) * bl) and not (got == MASK).any()


def test_strategies_and_bounds_have_power():
    """The greedy test above would pass with one strategy wired to every name: the
    four give different canvases here; entropy_bounded's bound and the dynamic
    threshold change the result, and each still matches the reference."""
    model = MODELS[torch.float32]
    ids = prompt(7, seed=1)
    kw = dict(block_length=8, denoising_steps=3)
    outs = {s: both(model, ids, remasking_strategy=s, **kw) for s in STRATEGIES}
    for expected, got in outs.values():
        assert torch.equal(got, expected)
    canvases = {tuple(got[0].tolist()) for _, got in outs.values()}
    assert len(canvases) == len(STRATEGIES)
    ebs = set()
    for eb in (1e-6, 0.6, 3.0, 1e6):
        expected, got = both(model, ids, remasking_strategy="entropy_bounded", eb_threshold=eb, **kw)
        assert torch.equal(got, expected), eb
        ebs.add(tuple(got[0].tolist()))
    assert len(ebs) >= 3
    thresholds = set()
    for thr in (0.0, 0.3, 0.9, 1.0):
        expected, got = both(model, ids, remasking_strategy="low_confidence_dynamic", confidence_threshold=thr, **kw)
        assert torch.equal(got, expected), thr
        thresholds.add(tuple(got[0].tolist()))
    assert len(thresholds) >= 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_ids_the_model_produces(strategy):
    """STOP boosted at two generated positions: generation ends after the block that
    first holds it (later blocks keep mask_id), as the reference; int, list and a
    list with an unused id."""
    model = Boost(MODELS[torch.float32], positions=(10, 14), boost=20.0)
    stopped = 0
    for P, bl, stops in ((6, 4, STOP), (8, 4, [STOP]), (5, 8, [3, STOP])):
        expected, got = both(model, prompt(P, seed=P), gen_length=20, block_length=bl, denoising_steps=bl,
                             remasking_strategy=strategy, stopping_criteria_idx=stops)
        assert torch.equal(got, expected), (P, bl)
        stopped += int((got[0, -bl:] == MASK).all())
    assert stopped == 3  # every run stopped before its last block


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("cache", ["block", None])
@pytest.mark.parametrize("strategy", ["low_confidence_dynamic", "entropy_bounded"])
def test_batch_left_padding_rows_as_alone(cache, strategy):
    """B = 3 with left padding (prompts 9, 6, 4: different first blocks and canvas
    widths), a stop id at different blocks per row: the batch equals the eager
    reference (each row alone) and each row equals ours on that row alone."""
    model = Boost(MODELS[torch.float32], positions=(11,), boost=20.0)
    ids = prompt(9, seed=11, batch=3)
    keep = torch.ones(3, 9, dtype=torch.long)
    keep[1, :3] = 0
    keep[2, :5] = 0
    ids[1, :3] = STOP  # pads holding a stop id must not stop the row
    kw = dict(block_length=4, denoising_steps=3, gen_length=14, remasking_strategy=strategy,
              stopping_criteria_idx=[STOP])
    expected = eager.block_diffusion_generate(model, {"input_ids": ids, "attention_mask": keep}, MASK,
                                              temperature=0.0, **KW, **kw)
    got = ours.block_diffusion_generate(model, {"input_ids": ids, "attention_mask": keep}, MASK, temperature=0.0,
                                        cache=cache, **KW, **kw)
    assert torch.equal(got, expected)
    masks_left = set()
    for r in range(3):
        pads = int((keep[r] == 0).sum())
        alone = ours.block_diffusion_generate(model, {"input_ids": ids[r:r + 1, pads:]}, MASK, temperature=0.0,
                                              cache=cache, **KW, **kw)
        assert torch.equal(got[r, pads:pads + alone.shape[1]], alone[0])
        assert torch.equal(got[r, :pads], ids[r, :pads])
        assert (got[r, pads + alone.shape[1]:] == MASK).all()
        masks_left.add(int((alone == MASK).sum()))
    assert len(masks_left) > 1  # rows stopped at different blocks


def test_unpadded_batch_stacks_rows():
    model = MODELS[torch.float32]
    ids = prompt(6, seed=2, batch=3)
    expected, got = both(model, ids, block_length=4, denoising_steps=4, remasking_strategy="low_confidence_static")
    assert torch.equal(got, expected) and got.shape == (3, 20)


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cached_equals_uncached_float64_one_call_per_step(strategy):
    """float64: cache="block" gives the tokens of cache=None. With the cache every
    call computes the current block (bl query rows) or, on a block's first step,
    the previous block too (2 bl: its keys recomputed from its final tokens, in
    place of SDAR's store_kv call); the first call also covers the prompt's full
    blocks. The calls are exactly the reference's denoising calls in number (no
    prefill call, no store_kv call)."""
    model = MODELS[torch.float64]
    for P, bl, steps in ((9, 4, 3), (8, 8, 8), (3, 4, 1)):
        ids = prompt(P, seed=P, batch=2)
        kw = dict(gen_length=GEN, block_length=bl, denoising_steps=steps, temperature=0.0,
                  remasking_strategy=strategy, **KW)
        spy = Boost(model)
        cached = ours.block_diffusion_generate(spy, {"input_ids": ids}, MASK, **kw)
        uncached = ours.block_diffusion_generate(model, {"input_ids": ids}, MASK, cache=None, **kw)
        assert torch.equal(cached, uncached)
        assert spy.widths[0] == (P // bl + 1) * bl
        assert set(spy.widths[1:]) <= {bl, 2 * bl}
        later_blocks = math.ceil((P + GEN) / bl) - P // bl - 1
        assert spy.widths[1:].count(2 * bl) == later_blocks
        assert set(spy.store_kv) == {True}
        one, ref = Boost(model), Boost(model)  # one row: the reference's calls are its own
        ours.block_diffusion_generate(one, {"input_ids": ids[:1]}, MASK, **kw)
        eager.block_diffusion_generate(ref, {"input_ids": ids[:1]}, MASK, **kw)
        assert len(one.widths) == ref.store_kv.count(False)
        assert ref.store_kv.count(True) == later_blocks + 1 + (P >= bl)  # the calls saved


# ----------------------------------------------------------------------------- host syncs, failures


@pytest.mark.parametrize("cache", ["block", None])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_host_sync_inside_steps(cache, strategy):
    model = Boost(MODELS[torch.float32], positions=(9,), boost=6.0)
    ids = prompt(9, seed=2, batch=3)
    keep = torch.ones(3, 9, dtype=torch.long)
    keep[2, :4] = 0
    kw = dict(block_length=4, denoising_steps=4, gen_length=GEN, temperature=0.8, top_k=50, top_p=0.9,
              remasking_strategy=strategy, stopping_criteria_idx=[STOP], **KW)
    with forbid_host_sync():
        out = ours.block_diffusion_generate(model, {"input_ids": ids, "attention_mask": keep}, MASK, cache=cache, **kw)
    assert out.shape[0] == 3


def test_model_that_samples_the_mask_raises():
    """A model whose argmax at one position is mask_id: the block keeps a mask after
    its steps; RuntimeError (the reference too; public: IndexError)."""
    model = Boost(_model(suppress_mask_logit=False), positions=(5,), boost=1e4, token=MASK)
    kw = dict(gen_length=8, block_length=4, denoising_steps=4, temperature=0.0,
              remasking_strategy="low_confidence_static")
    for fn in (eager.block_diffusion_generate, ours.block_diffusion_generate):
        with pytest.raises(RuntimeError, match="sampled mask_id"):
            fn(model, {"input_ids": prompt(4)}, MASK, **kw)


# ----------------------------------------------------------------------------- sampling

NV = 12
N = 700


@pytest.fixture(scope="module")
def small_model():
    return _model(vocab_size=NV, seed=1, logit_std=2.0)


def _sample(fn, model, temperature, **kw):
    ids = torch.randint(0, NV - 2, (1, 3), generator=torch.Generator().manual_seed(5))
    kw = dict(temperature=temperature, block_length=2, denoising_steps=2, gen_length=3, **kw)
    torch.manual_seed(0 if fn is ours.block_diffusion_generate else 1)
    if fn is ours.block_diffusion_generate:
        return fn(model, {"input_ids": ids.expand(N, -1)}, NV - 1, **kw)
    return torch.cat([fn(model, {"input_ids": ids}, NV - 1, **kw) for _ in range(N)])


@pytest.mark.parametrize("strategy,temperature,top_k,top_p", [
    ("low_confidence_dynamic", 1.0, 3, 1.0),
    ("low_confidence_static", 0.7, 0, 0.8),
    ("sequential", 1.0, 0, 1.0),
    ("entropy_bounded", 1.0, 4, 0.9),
])
def test_sampling_same_distribution(small_model, strategy, temperature, top_k, top_p):
    kw = dict(top_k=top_k, top_p=top_p, remasking_strategy=strategy, confidence_threshold=0.5, eb_threshold=0.5)
    got = _sample(ours.block_diffusion_generate, small_model, temperature, **kw)
    expected = _sample(eager.block_diffusion_generate, small_model, temperature, **kw)
    assert_same_distribution(got, expected)


def test_frequency_test_has_power(small_model):
    """The test above tells T = 1 from T = 2, and top-k 3 from no filter."""
    kw = dict(remasking_strategy="low_confidence_dynamic", confidence_threshold=0.5)
    a = _sample(ours.block_diffusion_generate, small_model, 1.0, **kw)
    assert_different_distribution(a, _sample(ours.block_diffusion_generate, small_model, 2.0, **kw))
    assert_different_distribution(a, _sample(ours.block_diffusion_generate, small_model, 1.0, top_k=3, **kw))


def test_same_seed_same_tokens_and_backends(backend):
    """Seeded sampling is reproducible, and every backend gives the reference
    backend's tokens (greedy and sampling) bit for bit."""
    if backend.device != "cpu":
        pytest.skip("the test model runs on the CPU")
    model = MODELS[torch.float32]
    ids = prompt(7, seed=4, batch=2)
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[1, :2] = 0
    p = {"input_ids": ids, "attention_mask": keep}
    kw = dict(block_length=4, denoising_steps=4, gen_length=8, remasking_strategy="entropy_bounded", **KW)
    settings = [dict(temperature=0.0), dict(temperature=0.9, top_k=30, top_p=0.95, seed=5)]
    if backend.interpreted:  # the Triton interpreter is slow per op: the sampling case, 4 tokens
        settings, kw["gen_length"] = settings[1:], 4
    for sampling in settings:
        expected = ours.block_diffusion_generate(model, p, MASK, backend="reference", **kw, **sampling)
        got = ours.block_diffusion_generate(model, p, MASK, backend=backend.name, **kw, **sampling)
        assert torch.equal(got, expected)
    torch.manual_seed(4)
    a = ours.block_diffusion_generate(model, p, MASK, temperature=1.0, **kw)
    torch.manual_seed(4)
    assert torch.equal(ours.block_diffusion_generate(model, p, MASK, temperature=1.0, **kw), a)


# ----------------------------------------------------------------------------- validation


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        return self.inner(input_ids, **kwargs)


@pytest.mark.parametrize("kw,name", [
    (dict(denoising_steps=0), "denoising_steps"),
    (dict(denoising_steps=-2), "denoising_steps"),
    (dict(block_length=0), "block_length"),
    (dict(gen_length=0), "gen_length"),
    (dict(remasking_strategy="random"), "remasking_strategy"),
    (dict(remasking_strategy="entropy_bounded", eb_threshold=None), "eb_threshold"),
    (dict(remasking_strategy="entropy_bounded", eb_threshold=0.0), "eb_threshold"),
    (dict(remasking_strategy="entropy_bounded", eb_threshold=math.nan), "eb_threshold"),
    (dict(confidence_threshold=1.5), "confidence_threshold"),
    (dict(confidence_threshold=-0.1), "confidence_threshold"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(top_p=math.nan), "top_p"),
    (dict(top_k=2.5), "top_k"),
    (dict(mask_id=V), "mask_id"),
    (dict(mask_id=-1), "mask_id"),
    (dict(stopping_criteria_idx=[V + 1]), "stopping_criteria_idx"),
    (dict(stopping_criteria_idx="eos"), "stopping_criteria_idx"),
    (dict(cache="prefix"), "cache"),
    (dict(prompt=prompt(6)), "prompt"),
    (dict(prompt={"ids": prompt(6)}), "prompt"),
    (dict(prompt={"input_ids": prompt(6)[0]}), "input_ids"),
    (dict(prompt={"input_ids": prompt(6).float()}), "input_ids"),
    (dict(prompt={"input_ids": torch.cat([prompt(5), torch.tensor([[MASK]])], 1)}), "mask_id"),
    (dict(prompt={"input_ids": prompt(6), "attention_mask": torch.ones(1, 2)}), "attention_mask"),
])
def test_bad_arguments_refused_before_the_model(kw, name):
    model = _Counting(MODELS[torch.float32])
    args = dict(prompt={"input_ids": prompt(6)}, mask_id=MASK, block_length=4, denoising_steps=4, gen_length=8)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=rf"dmkernels\.compat\.sdar\.block_diffusion_generate: .*{name}"):
        ours.block_diffusion_generate(model, **args)
    assert model.calls == 0


def test_model_without_block_causal_attention_refused():
    bidirectional = _Counting(DiffusionLM(tiny_config(vocab_size=V)))
    with pytest.raises(ValueError, match=r"block_diffusion_generate: model .*block-causal"):
        ours.block_diffusion_generate(bidirectional, {"input_ids": prompt(6)}, MASK, gen_length=4, block_length=4)
    assert bidirectional.calls == 0


def test_signature_is_sdars():
    import inspect

    params = inspect.signature(ours.block_diffusion_generate).parameters
    public = ["model", "prompt", "mask_id", "gen_length", "block_length", "denoising_steps", "temperature", "top_k",
              "top_p", "remasking_strategy", "confidence_threshold", "eb_threshold", "stopping_criteria_idx"]
    positional = [n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == public
    eager_params = inspect.signature(eager.block_diffusion_generate).parameters
    assert all(params[n].default == eager_params[n].default for n in public)


def test_empty_prompt_fills_the_canvas():
    """P = 0 (the public code allows it): the first block is all mask_id, so its
    logits tie up to rounding and the order is the tie rule's (the reference
    follows rounding noise there, see the drop-in's docstring); the canvas fills."""
    out = ours.block_diffusion_generate(MODELS[torch.float32], {"input_ids": torch.zeros(1, 0, dtype=torch.long)},
                                        MASK, gen_length=GEN, block_length=4, denoising_steps=2, temperature=0.0)
    assert out.shape == (1, 12) and not (out == MASK).any()
