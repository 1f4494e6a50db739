"""dmkernels.compat.llada2 (batched, exact block KV cache) against the eager LLaDA2.0 /
LLaDA2.1 references (dmkernels/bench/eager/llada2.py, uncached, one row at a time):
identical tokens at temperature 0 (float32 and float64), the same distribution
when sampling, each row of a padded batch as alone, cached = uncached, every step
on the current block only, no host sync inside a step, arguments refused before
the first model call."""
from __future__ import annotations

import math

import pytest
import torch

from dmkernels.bench.eager import llada2 as eager
from dmkernels.compat import llada2 as ours
from dmkernels.models import DiffusionLM, LLaDA2ForBlockDiffusion, llada2_tiny_config, tiny_config
from dmkernels.testing import forbid_host_sync
from parity_harness import assert_different_distribution, assert_same_distribution, one_thread  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:dmkernels. running")]

V = 512
MASK, EOS = V - 1, V - 2
IDS = dict(mask_id=MASK, eos_id=EOS)
GEN = 11


def _model(dtype=torch.float32, vocab_size=V, seed=0, **overrides):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LLaDA2ForBlockDiffusion(llada2_tiny_config(vocab_size=vocab_size, **overrides)).eval().to(dtype)
    torch.random.set_rng_state(state)
    return model


MODELS = {torch.float32: _model(torch.float32), torch.float64: _model(torch.float64)}


class EosAt(torch.nn.Module):
    """The model with ``boost`` added to the EOS logit at the given row-relative
    positions (read from ``position_ids``, so it works on any window: the eager
    full window, a cached block, a re-laid batch). Passes every keyword through;
    counts calls and records each call's query width."""

    def __init__(self, inner, positions=(), boost=20.0, token=EOS):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.positions = torch.tensor(list(positions), dtype=torch.int64)
        self.boost = boost
        self.token = token
        self.widths = []

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        self.widths.append(input_ids.shape[1])
        out = self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        if len(self.positions):
            pos = position_ids.expand(input_ids.shape[0], -1)[:, -out.logits.shape[1]:]
            out.logits[..., self.token] += self.boost * torch.isin(pos, self.positions)
        return out


def prompt(n, seed=0, batch=1):
    return torch.randint(0, V - 2, (batch, n), generator=torch.Generator().manual_seed(seed))


def both(version, model, ids, **kw):
    """(eager, ours) for one setting; ``version`` "2.0" or "2.1"."""
    if version == "2.1":
        return eager.generate_v21(model, ids, **kw), ours.generate_v21(model, ids, **kw)
    return eager.generate(model, ids, **kw), ours.generate(model, ids, **kw)


# ----------------------------------------------------------------------------- greedy, B = 1

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bl", [4, 8])
def test_greedy_v20_identical(dtype, bl):
    """Every steps x threshold pair, prompts ending off (6) and on (8) a block boundary."""
    model = MODELS[dtype]
    for steps in (1, 3, bl, bl + 5):
        for threshold in (0.0, 0.5, 0.95, 1.0):
            for P in (6, 8):
                kw = dict(block_length=bl, steps=steps, gen_length=GEN, threshold=threshold, **IDS)
                expected, got = both("2.0", model, prompt(P, seed=steps + P), **kw)
                assert torch.equal(got, expected), (steps, threshold, P)
                assert got.shape == (1, GEN) or got[0, -1] == EOS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bl", [4, 8])
def test_greedy_v21_identical(dtype, bl):
    """Thresholds x (editing on / off, max_post_steps 0 / 2), prompts off and on a
    boundary; editing must change some answer (else the test has no power)."""
    model = MODELS[dtype]
    edited_somewhere = False
    for i, threshold in enumerate((0.0, 0.5, 0.95, 1.0)):
        for editing_threshold, max_post_steps in ((0.5, 2), (0.5, 0), (1.0, 2), (0.2, 2)):
            P = (6, 8)[i % 2]
            ids = prompt(P, seed=i)
            kw = dict(block_length=bl, gen_length=GEN, threshold=threshold, max_post_steps=max_post_steps,
                      num_to_transfer=1 + i % 2, **IDS)
            expected, got = both("2.1", model, ids, editing_threshold=editing_threshold, **kw)
            assert torch.equal(got, expected), (threshold, editing_threshold, max_post_steps, P)
            if editing_threshold < 1:
                unedited = ours.generate_v21(model, ids, editing_threshold=1.0, **kw)
                edited_somewhere |= not torch.equal(unedited, got)
    assert edited_somewhere


@pytest.mark.parametrize("version", ["2.0", "2.1"])
@pytest.mark.parametrize("eos_early_stop", [False, True])
@pytest.mark.parametrize("boost", [20.0, 3.0])
def test_eos_the_model_produces(version, eos_early_stop, boost):
    """EOS boosted at two generated positions: a strong boost commits it early (masks
    before it), a mild one only sometimes wins; the answer stops at the first EOS."""
    model = EosAt(MODELS[torch.float32], positions=(10, 14), boost=boost)
    hits = 0
    for P, bl in ((6, 4), (8, 4), (5, 8)):
        kw = dict(block_length=bl, steps=bl, gen_length=GEN, threshold=0.9, eos_early_stop=eos_early_stop, **IDS)
        expected, got = both(version, model, prompt(P, seed=P), **kw)
        assert torch.equal(got, expected), (P, bl)
        hits += int(got[0, -1] == EOS and got.shape[1] < GEN)
    if boost > 10:
        assert hits == 3  # the strong boost always ends the answer early


def test_zero_steps_and_v20_steps_cap():
    """steps = min(steps, gen_length // minimal_topk): gen_length 3 < minimal_topk 4
    gives no step at all (gen_length mask ids), as the reference; minimal_topk 2
    halves the steps."""
    model = MODELS[torch.float32]
    for gen, minimal_topk in ((3, 4), (GEN, 2)):
        kw = dict(block_length=4, steps=8, gen_length=gen, threshold=0.95, minimal_topk=minimal_topk, **IDS)
        expected, got = both("2.0", model, prompt(6), **kw)
        assert torch.equal(got, expected)
    empty = ours.generate(model, prompt(6), block_length=4, steps=8, gen_length=3, minimal_topk=4, **IDS)
    assert (empty == MASK).all() and empty.shape == (1, 3)


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("version", ["2.0", "2.1"])
@pytest.mark.parametrize("cache", ["block", None])
def test_batch_left_padding_rows_as_alone(version, cache):
    """B = 3 with left padding (prompts 9, 6, 4: different first blocks and block
    counts), EOS at different positions so rows finish at different times: each row
    equals the eager reference and ours on that row alone."""
    model = EosAt(MODELS[torch.float32], positions=(11, 15), boost=20.0)
    ids = prompt(9, seed=11, batch=3)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, :3] = 0
    am[2, :5] = 0
    ids[1, :3] = EOS  # pads hold the pad id (= EOS): must not count as an EOS
    kw = dict(block_length=4, steps=3, gen_length=GEN, threshold=0.5, **IDS)
    if version == "2.1":
        kw.update(editing_threshold=0.5, max_post_steps=2)
    expected = (eager.generate_v21 if version == "2.1" else eager.generate)(model, ids, attention_mask=am, **kw)
    fn = ours.generate_v21 if version == "2.1" else ours.generate
    got = fn(model, ids, attention_mask=am, cache=cache, **kw)
    assert torch.equal(got, expected)
    lengths = set()
    for r in range(3):
        alone = fn(model, ids[r:r + 1, am[r].bool()], cache=cache, **kw)
        assert torch.equal(got[r, :alone.shape[1]], alone[0])
        assert (got[r, alone.shape[1]:] == EOS).all()
        lengths.add(alone.shape[1])
    assert len(lengths) > 1  # rows did finish at different lengths


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_cached_equals_uncached_float64_and_steps_see_only_the_block(version):
    """float64: cache="block" gives the tokens of cache=None. With the cache every
    call after the first computes the current block (bl query rows) or, once per
    block, the previous block too (2 bl: its keys recomputed from its final tokens,
    LLaDA2.0 only: LLaDA2.1's blocks end on a call that saw the final tokens); the
    first call also covers the prompt's full blocks."""
    model = MODELS[torch.float64]
    total_recomputed = total_later = 0
    for P, bl, thr in ((9, 4, 0.5), (8, 8, 0.95), (3, 4, 0.0)):
        kw = dict(block_length=bl, gen_length=GEN, threshold=thr, **IDS)
        if version == "2.1":
            kw.update(version="2.1", editing_threshold=0.4, max_post_steps=16)
        else:
            kw.update(steps=3)
        ids = prompt(P, seed=P, batch=2)
        spy = EosAt(model)
        cached = ours.generate(spy, ids, **kw)
        uncached = ours.generate(model, ids, cache=None, **kw)
        assert torch.equal(cached, uncached)
        first_end = (P // bl + 1) * bl
        assert spy.widths[0] == first_end
        assert set(spy.widths[1:]) <= {bl, 2 * bl}
        later_blocks = math.ceil((P + GEN) / bl) - P // bl - 1
        recomputed = spy.widths[1:].count(2 * bl)
        if version == "2.0":  # the last step of a block commits after its call: one recompute per later block
            assert recomputed == later_blocks
        else:  # a block ending on a call that changed nothing keeps that call's keys
            assert recomputed <= later_blocks
            total_recomputed += recomputed
            total_later += later_blocks
    if version == "2.1":  # only a block that ran out of post steps while editing is recomputed
        assert total_recomputed < total_later


def test_float32_agreement_rate_cached_vs_eager():
    """float32 (and bf16): the cached batched drop-in against the uncached eager
    reference over many prompts; the token agreement rate is printed (pytest -s)
    and must be high (float32 showed 100% here)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = MODELS[torch.float32] if dtype == torch.float32 else _model(torch.bfloat16)
        same = total = 0
        for seed in range(12):
            ids = prompt(3 + seed % 7, seed=100 + seed)
            kw = dict(block_length=4, steps=4, gen_length=8, threshold=0.9, **IDS)
            expected, got = both("2.0", model, ids, **kw)
            n = min(expected.shape[1], got.shape[1])
            same += int((expected[0, :n] == got[0, :n]).sum())
            total += max(expected.shape[1], got.shape[1])
        rates[dtype] = same / total
    print(f"\nLLaDA2.0 greedy token agreement, cached drop-in vs eager: float32 {rates[torch.float32]:.3f}, "
          f"bf16 {rates[torch.bfloat16]:.3f}")
    assert rates[torch.float32] >= 0.95
    assert rates[torch.bfloat16] >= 0.5


# ----------------------------------------------------------------------------- sampling

NV = 12
N = 700


@pytest.fixture(scope="module")
def small_model():
    return _model(vocab_size=NV, seed=1, logit_std=2.0)


def _sample(fn, model, temperature, **kw):
    ids = torch.randint(0, NV - 2, (1, 3), generator=torch.Generator().manual_seed(5))
    kw = dict(temperature=temperature, block_length=2, steps=2, gen_length=2, mask_id=NV - 1, eos_id=NV - 2, **kw)
    if fn is ours.generate or fn is ours.generate_v21:
        torch.manual_seed(0)
        return fn(model, ids.expand(N, -1), **kw)
    torch.manual_seed(1)
    return torch.cat([fn(model, ids, **kw) for _ in range(N)])


@pytest.mark.parametrize("version,temperature,top_k,top_p", [
    ("2.0", 1.0, 3, None),
    ("2.0", 0.7, None, 0.8),
    ("2.1", 1.0, 4, 0.9),
])
def test_sampling_same_distribution(small_model, version, temperature, top_k, top_p):
    kw = dict(top_k=top_k, top_p=top_p, threshold=0.5)
    if version == "2.1":
        kw.update(editing_threshold=0.3, max_post_steps=1)
        got = _sample(ours.generate_v21, small_model, temperature, **kw)
        expected = _sample(eager.generate_v21, small_model, temperature, **kw)
    else:
        got = _sample(ours.generate, small_model, temperature, **kw)
        expected = _sample(eager.generate, small_model, temperature, **kw)
    assert_same_distribution(got, expected)


def test_frequency_test_has_power(small_model):
    """The test above tells T = 1 from T = 2, and top-k 3 from no filter."""
    a = _sample(ours.generate, small_model, 1.0)
    assert_different_distribution(a, _sample(ours.generate, small_model, 2.0))
    assert_different_distribution(a, _sample(ours.generate, small_model, 1.0, top_k=3))


def test_same_seed_same_tokens():
    model = MODELS[torch.float32]
    kw = dict(temperature=1.0, top_k=20, block_length=4, steps=4, gen_length=GEN, **IDS)
    a = ours.generate(model, prompt(6, batch=2), seed=3, **kw)
    b = ours.generate(model, prompt(6, batch=2), seed=3, **kw)
    torch.manual_seed(4)
    c = ours.generate(model, prompt(6, batch=2), **kw)
    torch.manual_seed(4)
    d = ours.generate(model, prompt(6, batch=2), **kw)
    assert torch.equal(a, b) and torch.equal(c, d)


# ----------------------------------------------------------------------------- host syncs, guard


@pytest.mark.parametrize("version", ["2.0", "2.1"])
@pytest.mark.parametrize("cache", ["block", None])
def test_no_host_sync_inside_steps(version, cache):
    model = EosAt(MODELS[torch.float32], positions=(9,), boost=6.0)
    ids = prompt(9, seed=2, batch=3)
    am = torch.ones(3, 9, dtype=torch.long)
    am[2, :4] = 0
    kw = dict(block_length=4, steps=4, gen_length=GEN, temperature=0.8, top_k=50, top_p=0.9, **IDS)
    if version == "2.1":
        kw.update(version="2.1", editing_threshold=0.3)
    with forbid_host_sync():
        out = ours.generate(model, ids, attention_mask=am, cache=cache, **kw)
    assert out.shape[0] == 3 and not (out == MASK).any()


def test_v21_endless_block_raises():
    """A model that always proposes mask_id: the public loop never ends; here
    RuntimeError after max_block_calls steps of one block."""
    model = EosAt(MODELS[torch.float32], positions=range(64), boost=math.inf, token=MASK)
    with pytest.raises(RuntimeError, match=r"compat\.llada2\.generate_v21: block 1 .*after 5 steps"):
        ours.generate_v21(model, prompt(6), block_length=4, gen_length=6, max_block_calls=5, **IDS)


# ----------------------------------------------------------------------------- validation, patch


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        return self.inner(input_ids, **kwargs)


@pytest.mark.parametrize("kw,name", [
    (dict(block_length=0), "block_length"),
    (dict(steps=0), "steps"),
    (dict(gen_length=0), "gen_length"),
    (dict(minimal_topk=0), "minimal_topk"),
    (dict(minimal_topk=5), "minimal_topk"),
    (dict(threshold=-0.1), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=math.nan), "threshold"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=math.inf), "top_p"),
    (dict(mask_id=V), "mask_id"),
    (dict(eos_id=V + 3), "eos_id"),
    (dict(eos_id=MASK), "eos_id"),
    (dict(num_to_transfer=0), "num_to_transfer"),
    (dict(max_post_steps=-1), "max_post_steps"),
    (dict(editing_threshold=1.5), "editing_threshold"),
    (dict(version="3"), "version"),
    (dict(cache="prefix"), "cache"),
    (dict(attention_mask=torch.ones(1, 2)), "attention_mask"),
])
def test_bad_arguments_refused_before_the_model(kw, name):
    model = _Counting(MODELS[torch.float32])
    args = dict(block_length=4, steps=4, gen_length=8, **IDS)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=rf"dmkernels\.compat\.llada2\.generate: .*{name}"):
        ours.generate(model, prompt(6), **args)
    assert model.calls == 0


def test_bad_inputs_and_models_refused():
    model = MODELS[torch.float32]
    ids = prompt(6)
    ids[0, 2] = MASK
    with pytest.raises(ValueError, match="inputs holds mask_id"):
        ours.generate(model, ids, gen_length=4, block_length=4, **IDS)
    with pytest.raises(ValueError, match="inputs"):
        ours.generate(model, prompt(6)[0], gen_length=4, block_length=4, **IDS)
    bidirectional = DiffusionLM(tiny_config(vocab_size=V))
    with pytest.raises(ValueError, match=r"generate: model .*block-causal"):
        ours.generate(bidirectional, prompt(6), gen_length=4, block_length=4, **IDS)
    with pytest.raises(ValueError, match=r"generate_v21: model .*block-causal"):
        ours.generate_v21(bidirectional, prompt(6), gen_length=4, block_length=4, **IDS)


def test_version_switch_and_patch():
    model = _model()
    ids = prompt(6)
    kw = dict(block_length=4, gen_length=GEN, threshold=0.5, **IDS)
    v21 = ours.generate_v21(model, ids, **kw)
    assert torch.equal(ours.generate(model, ids, version="2.1", **kw), v21)
    assert torch.equal(ours.generate(model, ids, max_post_steps=16, **kw), v21)  # a 2.1 argument -> 2.1 defaults
    assert torch.equal(ours.generate(model, ids, **kw), ours.generate(model, ids, version="2.0", **kw))
    ours.patch(model)
    assert torch.equal(model.generate(ids, **kw), ours.generate(model, ids, **kw))
    ours.unpatch(model)
    assert "generate" not in vars(model)
    ours.patch(model, version="2.1")
    assert torch.equal(model.generate(ids, **kw), v21)
    ours.unpatch(model)

    class PublicV21(LLaDA2ForBlockDiffusion):  # a remote-code class whose generate is 2.1's
        def generate(self, inputs=None, temperature=0.0, editing_threshold=0.9):
            raise AssertionError("not patched")

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    public = PublicV21(llada2_tiny_config(vocab_size=V)).eval()
    torch.random.set_rng_state(state)
    ours.patch(public)
    assert torch.equal(public.generate(ids, **kw), v21)


# ----------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.8), (5, 0.6), (None, 0.0), (40, 1.0), (0, None)])
def test_filter_keeps_what_the_reference_keeps(top_k, top_p):
    """filter_top_k_top_p_ in place on a slice of logits that cannot flatten into a
    view (as the model's block rows): the kept set of the reference's top-k then
    top-p on logits / T (with ties at the k-th value)."""
    from dmkernels.block_sampler import filter_top_k_top_p_

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 40, generator=g) * 3
    logits[0, 2, :6] = logits[0, 2, 6]  # ties with the k-th value
    rows = logits[:, 1:4]
    expected = eager._top_p(eager._top_k(rows / 0.7, top_k), top_p) == -math.inf
    filter_top_k_top_p_(rows, 0.7, top_k, top_p)
    assert torch.equal(rows == -math.inf, expected)
    assert torch.isfinite(logits[:, [0, 4]]).all()  # rows outside the slice untouched


def test_edit_fallback_matches_the_op(monkeypatch):
    """The torch fallback of block_sampler.edit_ (used when this build has no
    dmkernels.edit_) against the op, on a strided block view."""
    from dmkernels import block_sampler, ops

    g = torch.Generator().manual_seed(1)
    canvas = torch.randint(0, 6, (3, 12), generator=g)
    token = torch.randint(-1, 6, (3, 4), generator=g)
    conf = torch.rand(3, 4, generator=g)
    editable = torch.rand(3, 4, generator=g) > 0.3
    a, b = canvas.clone(), canvas.clone()
    if hasattr(ops, "edit_"):
        changed_op, edits_op = block_sampler.edit_(a[:, 4:8], token, conf, editable, 0.4)
    else:
        changed_op = editable & (token != canvas[:, 4:8]) & (conf > 0.4) & (token >= 0)
        a[:, 4:8] = torch.where(changed_op, token, a[:, 4:8])
        edits_op = changed_op.sum(-1)
    monkeypatch.delattr(ops, "edit_", raising=False)
    changed, edits = block_sampler.edit_(b[:, 4:8], token, conf, editable, 0.4)
    assert torch.equal(changed, changed_op) and torch.equal(edits, edits_op) and torch.equal(a, b)
    assert changed.any() and not changed.all()


def test_editing_none_is_off():
    """editing_threshold=None (an extension) = no edit: as a threshold no confidence exceeds."""
    model = MODELS[torch.float32]
    kw = dict(block_length=4, gen_length=GEN, threshold=0.5, max_post_steps=2, **IDS)
    for P in (6, 8):
        expected = eager.generate_v21(model, prompt(P), editing_threshold=1.0, **kw)
        assert torch.equal(ours.generate_v21(model, prompt(P), editing_threshold=None, **kw), expected)


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_lagged_flag_reads_change_nothing(monkeypatch, version):
    """Reading the "block done" flag two steps late (CUDA reads it one step late, so
    the GPU never waits for the host) only adds steps that change nothing."""
    from dmkernels import block_sampler

    ids = prompt(9, seed=11, batch=3)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, :3] = 0
    kw = dict(block_length=4, steps=6, gen_length=GEN, threshold=0.5, attention_mask=am, **IDS)
    if version == "2.1":
        kw.update(version="2.1", editing_threshold=0.5, max_post_steps=3)
    prompt_model = EosAt(MODELS[torch.float32], positions=(12,), boost=20.0)
    plain = ours.generate(prompt_model, ids, **kw)
    calls = len(prompt_model.widths)
    original = block_sampler.BlockDiffusionSampler.__init__
    monkeypatch.setattr(block_sampler.BlockDiffusionSampler, "__init__",
                        lambda self, *a, **k: original(self, *a, **dict(k, lag=2)))
    prompt_model.widths.clear()
    assert torch.equal(ours.generate(prompt_model, ids, **kw), plain)
    assert len(prompt_model.widths) > calls


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_same_tokens_on_every_backend(backend, version):
    """Greedy and seeded sampling give the reference backend's tokens bit for bit
    (the model stays on the CPU; CUDA backends would need it on the GPU; edit_ runs
    wherever its dispatcher puts it)."""
    if backend.device != "cpu":
        pytest.skip("the test model runs on the CPU")
    model = MODELS[torch.float32]
    ids = prompt(7, seed=4, batch=2)
    am = torch.ones(2, 7, dtype=torch.long)
    am[1, :2] = 0
    kw = dict(block_length=4, steps=4, gen_length=8, threshold=0.6, attention_mask=am, **IDS)
    if version == "2.1":
        kw.update(version="2.1", editing_threshold=0.4, max_post_steps=2)
    settings = [dict(), dict(temperature=0.9, top_k=30, top_p=0.95, seed=5)]
    if backend.interpreted:  # the Triton interpreter is slow per op: the sampling case, 4 tokens
        settings, kw["gen_length"] = settings[1:], 4
    for sampling in settings:
        expected = ours.generate(model, ids, backend="reference", **kw, **sampling)
        assert torch.equal(ours.generate(model, ids, backend=backend.name, **kw, **sampling), expected)
