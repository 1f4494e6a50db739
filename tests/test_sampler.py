"""dmkernels.generate: loop structure, policies, EOS, CFG, caches, errors, no host sync."""
import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.schedules import DreamTimesteps, LinearCounts, Schedule
from dmkernels.testing import HostSyncError, forbid_host_sync, step_scope

V = 37
MASK = V - 1


class ToyModel(torch.nn.Module):
    """Bidirectional enough for tests: every position sees the mean of the canvas."""

    def __init__(self, vocab=V, width=16, scale=2.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, width, generator=g))
        self.head = torch.nn.Parameter(torch.randn(width, vocab, generator=g) * scale)
        self.calls = []

    def forward(self, x, attention_mask=None):
        self.calls.append((tuple(x.shape), attention_mask is not None))
        h = self.emb[x]
        if attention_mask is not None:
            weights = attention_mask[:, :, None].to(h.dtype)
            h = h + (h * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        else:
            h = h + h.mean(1, keepdim=True)
        return h @ self.head


ALL_POLICIES = [
    P.LowConfidence(), P.Random(), P.Margin(), P.Entropy(), P.DreamOrigin(),
    P.LowConfidence(alg_temp=0.5), P.Margin(DreamTimesteps(), tempered_scores=True),
    P.Threshold(0.3), P.Factor(1.0), P.Factor(1.0, fast_dllm_quirk=True),
    P.EntropyBounded(0.5), P.EntropyBounded(0.5, error="margin"), P.EntropyBounded(0.5, error="confidence"),
    P.Dilated(2), P.Dilated(3, remask_threshold=0.3),
]


def prompts(B=2, P_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, MASK - 1, (B, P_len), generator=g)


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=repr)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_policy_fills_the_canvas_without_host_sync(policy, temperature):
    ids = prompts(B=3)
    am = torch.ones_like(ids)
    am[0, :2] = 0
    model = ToyModel()
    forward = model.forward
    # Like a trained model, never propose the mask token (sampling could draw it).
    model.forward = lambda *a, **kw: forward(*a, **kw).index_fill(-1, torch.tensor([MASK]), -30.0)
    with forbid_host_sync():
        out = dmkernels.generate(model, ids, attention_mask=am, gen_length=12, block_length=4, steps=6,
                                 policy=policy, temperature=temperature, cfg_scale=0.5, eos_token_id=None,
                                 seed=3, mask_id=MASK)
    x = out.sequences
    assert x.shape == (3, 17)
    assert torch.equal(x[:, :5], ids), "the prompt was overwritten"
    assert not (x == MASK).any(), "masks left"
    assert out.model_calls >= 3


def test_the_guard_catches_syncs_inside_a_step():
    class SyncingPolicy(P.Policy):
        adaptive = True

        def select(self, ctx):
            int(ctx.eligible.sum())  # a host sync
            return ctx.eligible

    with forbid_host_sync(), pytest.raises(HostSyncError):
        dmkernels.generate(ToyModel(), prompts(), gen_length=4, block_length=4, steps=4, policy=SyncingPolicy(),
                           mask_id=MASK)
    with forbid_host_sync(), step_scope():
        for sync in (lambda t: t.item(), lambda t: t.tolist(), lambda t: bool(t), lambda t: t.nonzero(),
                     lambda t: t.cpu(), lambda t: t[t > 0], lambda t: torch.nonzero(t)):
            with pytest.raises(HostSyncError):
                sync(torch.ones(1))
    assert torch.ones(1).item() == 1.0  # restored outside the guard


def test_scheduled_policy_runs_exactly_its_steps_and_commits_linear_counts():
    ids = prompts(B=2)
    commits = []

    class Recording(P.LowConfidence):
        def select(self, ctx):
            select = super().select(ctx)
            commits.append(select.sum(-1).tolist())
            return select

    out = dmkernels.generate(ToyModel(), ids, gen_length=10, block_length=5, steps=6, policy=Recording(),
                             mask_id=MASK)
    assert out.model_calls == 6
    # 5 masks over 3 steps: 2, 2, 1 per block and row.
    assert commits == [[2, 2], [2, 2], [1, 1]] * 2


def test_adaptive_policy_stops_each_block_when_done():
    class OnePerStep(P.Policy):
        adaptive = True

        def select(self, ctx):
            return dmkernels.select_topk(ctx.stats.confidence, torch.ones_like(ctx.eligible[:, 0], dtype=torch.int64),
                                         ctx.eligible)

    out = dmkernels.generate(ToyModel(), prompts(), gen_length=16, block_length=8, steps=1,
                             policy=P.Threshold(0.0), mask_id=MASK)  # commits everything at once
    assert out.model_calls == 2
    out = dmkernels.generate(ToyModel(), prompts(), gen_length=16, block_length=8, steps=1,
                             policy=OnePerStep(), mask_id=MASK)
    assert out.model_calls == 16


def test_dilated_takes_one_step_per_group():
    out = dmkernels.generate(ToyModel(), prompts(), gen_length=32, block_length=16, steps=1,
                             policy=P.Dilated(2), mask_id=MASK)
    groups = int(dmkernels.dilated_groups(16, 2).max()) + 1
    assert out.model_calls == 2 * groups


def test_same_seed_same_tokens_and_different_seed_differs():
    kw = dict(gen_length=12, block_length=4, steps=12, policy=P.Random(), temperature=1.0, mask_id=MASK)
    a = dmkernels.generate(ToyModel(), prompts(), seed=7, **kw).sequences
    b = dmkernels.generate(ToyModel(), prompts(), seed=7, **kw).sequences
    c = dmkernels.generate(ToyModel(), prompts(), seed=8, **kw).sequences
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)
    d = dmkernels.generate(ToyModel(), prompts(), **kw).sequences
    torch.manual_seed(5)
    e = dmkernels.generate(ToyModel(), prompts(), **kw).sequences
    assert torch.equal(d, e), "seed=None must follow torch.manual_seed"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_backends_give_the_same_tokens(backend):
    if backend == "native" and not dmkernels.backends()["cpu"] == "available":
        pytest.skip("no compiled extension")
    kw = dict(gen_length=12, block_length=6, steps=6, temperature=0.9, seed=11, mask_id=MASK)
    for policy in (P.LowConfidence(), P.EntropyBounded(0.3), P.Dilated(2, remask_threshold=0.2)):
        ours = dmkernels.generate(ToyModel(), prompts(), policy=policy, backend=backend, **kw).sequences
        ref = dmkernels.generate(ToyModel(), prompts(), policy=policy, backend="reference", **kw).sequences
        assert torch.equal(ours, ref)


def test_eos_finishes_rows_and_stops_generation():
    model = ToyModel()
    ids = prompts(B=2)
    eos = int(dmkernels.generate(model, ids, gen_length=4, block_length=4, steps=4, policy=P.LowConfidence(),
                                 mask_id=MASK).sequences[0, 5])
    model.calls.clear()
    out = dmkernels.generate(model, ids, gen_length=16, block_length=4, steps=16, policy=P.LowConfidence(),
                             mask_id=MASK, eos_token_id=eos)
    x = out.sequences
    first_block = x[:, 5:9]
    finished = (first_block == eos).any(-1)
    assert finished[0]
    assert (x[0, 9:] == eos).all(), "a finished row is filled with EOS"
    if finished.all():
        assert out.model_calls == 4, "generation stops when every row is finished"
    assert not (x == MASK).any()


def test_cfg_matches_guided_logits():
    """With cfg_scale the step uses u + (s+1)(c-u), where u masks the prompt."""
    model = ToyModel()
    ids = prompts(B=1)
    out = dmkernels.generate(model, ids, gen_length=1, block_length=1, steps=1, policy=P.LowConfidence(),
                             cfg_scale=1.5, mask_id=MASK).sequences
    assert model.calls == [((2, 6), False)], "one doubled batch per step"
    x = torch.cat([ids, torch.full((1, 1), MASK)], 1)
    un = x.clone()
    un[:, :5] = MASK
    with torch.no_grad():
        c, u = model(x), model(un)
    guided = u + 2.5 * (c - u)
    assert out[0, 5] == guided[0, 5].argmax()


def test_errors_name_the_argument():
    m, ids = ToyModel(), prompts()
    kw = dict(gen_length=8, block_length=4, steps=4, policy=P.LowConfidence(), mask_id=MASK)
    with pytest.raises(ValueError, match="block_length"):
        dmkernels.generate(m, ids, **dict(kw, block_length=3))
    with pytest.raises(ValueError, match="steps"):
        dmkernels.generate(m, ids, **dict(kw, steps=3))
    with pytest.raises(ValueError, match="policy"):
        dmkernels.generate(m, ids, **dict(kw, policy="low_confidence"))
    with pytest.raises(ValueError, match="input_ids"):
        dmkernels.generate(m, ids.float(), **kw)
    with pytest.raises(ValueError, match="attention_mask"):
        dmkernels.generate(m, ids, attention_mask=torch.ones(1, 2), **kw)
    with pytest.raises(ValueError, match="temperature"):
        dmkernels.generate(m, ids, temperature=-1.0, **kw)
    with pytest.raises(ValueError, match="cache"):
        dmkernels.generate(m, ids, cache="triple", **kw)
    with pytest.raises(ValueError, match="error"):
        P.EntropyBounded(0.1, error="perplexity")


def test_linear_counts_and_dream_timesteps():
    s = LinearCounts()
    before = snapshot(s)
    plan = s.begin_block(torch.tensor([7, 3, 0]), 3)
    assert [plan.quota(i, None).tolist() for i in range(3)] == [[3, 1, 0], [2, 1, 0], [2, 1, 0]]
    d = DreamTimesteps(eps=1e-3)
    plan = d.begin_block(torch.tensor([10, 10]), 4)
    masked = torch.tensor([10, 10])
    total = 0
    for i in range(4):
        k = plan.quota(i, masked)
        t = torch.linspace(1, 1e-3, 5)
        mean = float(masked.sum()) / 2
        expected = int(mean * float(1 - t[i + 1] / t[i])) if i < 3 else int(mean)
        assert k.tolist() == [expected] * 2
        masked = masked - k
        total += expected
    assert total == 10
    assert plan.transfer_probability(3).item() == 1.0
    # The plans hold the block's state; the schedules stay as they were built.
    assert snapshot(s) == before and snapshot(d) == snapshot(DreamTimesteps(eps=1e-3))


def test_a_schedule_of_the_older_protocol_still_works():
    """A user's schedule that keeps its state on itself (begin_block returns None)
    serves as its own plan."""
    class EverythingAtTheLastStep(Schedule):
        def begin_block(self, masked, steps):
            self.steps = steps

        def quota(self, step, masked_now):
            return torch.where(torch.as_tensor(step) == self.steps - 1, masked_now, 0)

    out = dmkernels.generate(ToyModel(), prompts(), gen_length=8, block_length=4, steps=6,
                             policy=P.LowConfidence(EverythingAtTheLastStep()), mask_id=MASK)
    assert out.model_calls == 6 and not (out.sequences == MASK).any()


def test_custom_policy_in_a_few_lines():
    class MostConfidentHalf(P.Policy):
        adaptive = True

        def select(self, ctx):
            k = (ctx.eligible.sum(-1) + 1) // 2
            return dmkernels.select_topk(ctx.stats.confidence, k, ctx.eligible)

    with forbid_host_sync():
        out = dmkernels.generate(ToyModel(), prompts(), gen_length=8, block_length=8, steps=1,
                                 policy=MostConfidentHalf(), mask_id=MASK)
    assert out.model_calls == 4  # 8 -> 4 -> 2 -> 1 -> 0
    assert not (out.sequences == MASK).any()


def test_progress_bar(capsys):
    dmkernels.generate(ToyModel(), prompts(), gen_length=4, block_length=4, steps=2, policy=P.LowConfidence(),
                       mask_id=MASK, progress=True)
    assert "dmkernels" in capsys.readouterr().err


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("policy", [P.LowConfidence(), P.Threshold(0.3), P.Dilated(2)], ids=repr)
def test_shipped_model_with_caches_padding_and_cfg_has_no_host_sync(cache, policy):
    from dmkernels.models import DiffusionLM, tiny_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=61)
    model = DiffusionLM(config).eval()
    ids = torch.randint(0, 55, (3, 6))
    am = torch.ones_like(ids)
    am[1, :3] = 0
    with forbid_host_sync():
        out = dmkernels.generate(model, ids, attention_mask=am, gen_length=8, block_length=4, steps=4,
                                 policy=policy, cache=cache, cfg_scale=0.5, temperature=0.5, seed=1)
    assert not (out.sequences == config.mask_token_id).any()
    assert torch.equal(out.sequences[:, :6], ids)


def test_cache_stale_marks_what_was_committed_since_the_refresh():
    from dmkernels.cache import PrefixCache
    from dmkernels.models import DiffusionLM, tiny_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=61)
    cache = PrefixCache()
    snapshots = []

    class Spy(P.LowConfidence):
        def select(self, ctx):
            snapshots.append((ctx.x == config.mask_token_id).clone())
            return super().select(ctx)

    dmkernels.generate(DiffusionLM(config).eval(), torch.randint(0, 55, (2, 4)), gen_length=6, block_length=6,
                       steps=3, policy=Spy(), cache=cache)
    # The refresh is the block's first call, before step 0 commits; so at the end, stale is every
    # position of the block that was masked when the block began.
    assert torch.equal(cache.stale[:, 4:], snapshots[0])
    assert not cache.stale[:, :4].any()


def test_hugging_face_auto_model_and_shifted_logits():
    from transformers import AutoModelForMaskedLM

    from dmkernels.models import tiny_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=61)
    model = AutoModelForMaskedLM.from_config(config).eval()
    ids = torch.randint(0, 55, (2, 4))
    # One step commits the whole block from the all-mask canvas: tokens are that canvas's argmaxes.
    a = dmkernels.generate(model, ids, gen_length=4, block_length=4, steps=1, policy=P.LowConfidence())
    b = dmkernels.generate(model, ids, gen_length=4, block_length=4, steps=1, policy=P.LowConfidence(),
                           shift_logits=True)
    with torch.no_grad():
        x = torch.cat([ids, torch.full((2, 4), config.mask_token_id)], 1)
        logits = model(x).logits
    assert torch.equal(a.sequences[:, 4:], logits[:, 4:8].argmax(-1))
    assert torch.equal(b.sequences[:, 4:], logits[:, 3:7].argmax(-1)), "shifted: row p - 1 predicts position p"


class NoMaskModel(ToyModel):
    """Never proposes [MASK] (a trained model does not; the toy one might)."""

    def forward(self, x, attention_mask=None):
        logits = super().forward(x, attention_mask)
        logits[..., MASK] = float("-inf")
        return logits


@pytest.mark.parametrize("policy", [P.LowConfidence(), P.Random(), P.Threshold(0.3), P.EntropyBounded(0.5)], ids=repr)
@pytest.mark.parametrize("block_length", [None, 7])
def test_infill_fills_scattered_masks_and_keeps_the_rest(policy, block_length):
    g = torch.Generator().manual_seed(3)
    canvas = torch.randint(0, MASK, (3, 21), generator=g)
    holes = torch.rand(3, 21, generator=g) < 0.5
    holes[0] = False  # a row with nothing to fill
    canvas[holes] = MASK
    model = NoMaskModel()
    with forbid_host_sync():
        out = dmkernels.infill(model, canvas, steps=6 if block_length is None else 9, policy=policy,
                               block_length=block_length, seed=4, mask_id=MASK)
    assert out.sequences.shape == canvas.shape
    assert not (out.sequences == MASK).any()
    assert torch.equal(out.sequences[~holes], canvas[~holes])
    if not policy.adaptive:
        assert out.model_calls == (6 if block_length is None else 9)
    # The model always saw the whole canvas.
    assert all(shape == (3, 21) for shape, _ in model.calls)


def test_infill_matches_generate_when_the_masks_are_a_suffix():
    prompt = prompts(B=2, P_len=6)
    model = ToyModel()
    canvas = torch.cat([prompt, torch.full((2, 12), MASK)], 1)
    # infill's one block spans the prompt too, where nothing is masked: the same
    # decisions as generate's one block over the generated part (greedy: the noise
    # rows differ, the canvas rows being longer).
    want = dmkernels.generate(model, prompt, gen_length=12, block_length=12, steps=6, policy=P.LowConfidence(),
                              temperature=0.0, seed=9, mask_id=MASK)
    got = dmkernels.infill(model, canvas, steps=6, policy=P.LowConfidence(), temperature=0.0, seed=9,
                           mask_id=MASK)
    assert torch.equal(got.sequences, want.sequences)


def test_infill_errors_name_the_argument():
    model = ToyModel()
    with pytest.raises(ValueError, match="canvas"):
        dmkernels.infill(model, torch.zeros(5, dtype=torch.int64), steps=2, policy=P.LowConfidence())
    with pytest.raises(ValueError, match="canvas"):
        dmkernels.infill(model, torch.zeros(2, 5), steps=2, policy=P.LowConfidence())
    with pytest.raises(ValueError, match="attention_mask"):
        dmkernels.infill(model, torch.zeros(2, 5, dtype=torch.int64), steps=1, policy=P.LowConfidence(),
                         attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="block_length"):
        dmkernels.infill(model, torch.zeros(2, 5, dtype=torch.int64), steps=1, policy=P.LowConfidence(),
                         block_length=2)


# -- settings, hooks, strategies, stateless policies ---------------------------------------------

def snapshot(obj, values: bool = True):
    """A comparable deep picture of an object: its attributes, recursively; tensors by
    dtype, shape and (with ``values``) contents; modules by mode and state_dict."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", str(obj.dtype), tuple(obj.shape), obj.detach().cpu().tolist() if values else None)
    if isinstance(obj, torch.nn.Module):
        return ("module", type(obj).__name__, obj.training,
                tuple((k, snapshot(v, values)) for k, v in obj.state_dict().items()))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((k, snapshot(v, values)) for k, v in obj.items())))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(snapshot(v, values) for v in obj))
    if isinstance(obj, (int, float, str, bool, type(None), torch.device, torch.dtype)):
        return obj
    if hasattr(obj, "__dict__"):
        return (type(obj).__name__, snapshot(vars(obj), values))
    return (type(obj).__name__, id(obj))


def test_snapshot_sees_changes_deep_inside():
    class Holder:
        def __init__(self):
            self.schedule = LinearCounts()
            self.cache = {}
            self.module = torch.nn.Linear(2, 1)

    h = Holder()
    before = snapshot(h)
    h.schedule.steps = 3
    assert snapshot(h) != before
    h = Holder()
    before = snapshot(h)
    h.cache[1] = torch.zeros(2)
    assert snapshot(h) != before
    h = Holder()
    before, shapes = snapshot(h), snapshot(h, values=False)
    with torch.no_grad():
        h.module.weight.add_(1)
    assert snapshot(h) != before and snapshot(h, values=False) == shapes


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=repr)
def test_generating_leaves_the_policy_as_it_was(policy):
    before = snapshot(policy)
    for cache in (None, "dual"):
        from dmkernels.models import DiffusionLM, tiny_config
        model = ToyModel() if cache is None else DiffusionLM(tiny_config(vocab_size=V)).eval()
        dmkernels.generate(model, prompts(), gen_length=8, block_length=4, steps=4, policy=policy,
                           temperature=0.5, seed=1, mask_id=MASK, cache=cache)
        dmkernels.infill(ToyModel(), torch.full((2, 6), MASK), steps=3, policy=policy, seed=2, mask_id=MASK)
    assert snapshot(policy) == before


def test_sampler_config_defaults_are_generates():
    import dataclasses
    import inspect

    from dmkernels.sampler import SamplerConfig

    config = SamplerConfig()
    for name, parameter in inspect.signature(dmkernels.generate).parameters.items():
        if name in {f.name for f in dataclasses.fields(SamplerConfig)} and parameter.default is not inspect._empty:
            assert getattr(config, name) == parameter.default, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3


def test_a_sampler_from_a_config_and_settings_is_generate():
    from dmkernels.sampler import Sampler, SamplerConfig

    want = dmkernels.generate(ToyModel(), prompts(), gen_length=8, block_length=4, steps=4,
                              policy=P.LowConfidence(), temperature=0.7, seed=3, mask_id=MASK)
    config = SamplerConfig(gen_length=8, block_length=4, steps=4, temperature=0.7, seed=3, mask_id=MASK)
    got = Sampler(ToyModel(), prompts(), P.LowConfidence(), config).run()
    assert torch.equal(got.sequences, want.sequences) and got.model_calls == want.model_calls
    # Keyword settings override the config's fields.
    got = Sampler(ToyModel(), prompts(), P.LowConfidence(), SamplerConfig(seed=99), gen_length=8,
                  block_length=4, steps=4, temperature=0.7, seed=3, mask_id=MASK).run()
    assert torch.equal(got.sequences, want.sequences)
    with pytest.raises(TypeError, match="unknown setting.*gen_lenght"):
        Sampler(ToyModel(), prompts(), P.LowConfidence(), gen_lenght=8)
    with pytest.raises(TypeError, match="config must be"):
        Sampler(ToyModel(), prompts(), P.LowConfidence(), {"gen_length": 8})
    with pytest.raises(ValueError, match="policy must be"):
        Sampler(ToyModel(), prompts(), None, config)


def test_a_custom_sampler_overrides_the_hooks():
    """A new model family's sampler: other blocks, a look at every step."""
    from dmkernels.sampler import Sampler, SamplerConfig

    class RightToLeft(Sampler):
        def blocks(self):
            for b in reversed(range(self.num_blocks)):
                start = self.P + b * self.block_length
                yield b, start, start + self.block_length

        def after_step(self, step, rows):  # (first block all masks, last block has masks)
            masked = self.x[:, self.P:] == self.mask_id
            self.seen.append((bool(masked[:, :4].all()), bool(masked[:, 4:].any())))

    sampler = RightToLeft(ToyModel(), prompts(), P.LowConfidence(),
                          SamplerConfig(gen_length=8, block_length=4, steps=4, mask_id=MASK))
    sampler.seen = []
    out = sampler.run()
    assert not (out.sequences == MASK).any() and out.model_calls == 4
    # The last block is filled first, while the first block stays all masks.
    assert sampler.seen == [(True, True), (True, False), (False, False), (False, False)]


def test_model_calls_count_each_call_once():
    from dmkernels.compat.dream import _DreamSampler
    from dmkernels.sampler import SamplerConfig

    for policy, cfg_scale in ((P.LowConfidence(), 0.0), (P.Threshold(0.3), 0.5)):
        model = ToyModel()
        out = dmkernels.generate(model, prompts(), gen_length=8, block_length=4, steps=4, policy=policy,
                                 cfg_scale=cfg_scale, mask_id=MASK)
        assert out.model_calls == len(model.calls)
    model = ToyModel()
    out = _DreamSampler(model, prompts(), P.Entropy(DreamTimesteps(), tempered_scores=True),
                        SamplerConfig(gen_length=6, block_length=6, steps=3, shift_logits=True, mask_id=MASK),
                        top_k=5).run()
    assert out.model_calls == len(model.calls) == 3


def test_a_parallel_strategy_plugs_in_without_the_sampler_knowing_it():
    """The sampler only calls the strategy's methods: a new mode is a subclass."""
    from dmkernels import distributed as D

    class Spy(D.Parallel):
        def __init__(self):
            self.calls = []

        def begin(self, batch_size):
            self.calls.append(("begin", batch_size))
            return 0, 0

        def token_stats(self, rows, *, row_offset=0, **kwargs):
            self.calls.append(("token_stats", row_offset))
            return super().token_stats(rows, row_offset=row_offset, **kwargs)

        def agree(self, done):
            self.calls.append(("agree",))
            return done

    kw = dict(gen_length=8, block_length=4, steps=4, policy=P.Threshold(0.3), temperature=0.7, seed=3, mask_id=MASK)
    want = dmkernels.generate(ToyModel(), prompts(), **kw)
    spy = Spy()
    got = dmkernels.generate(ToyModel(), prompts(), parallel=spy, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert spy.calls[0] == ("begin", 2)
    assert [c for c in spy.calls if c[0] == "token_stats"] == [("token_stats", 0)] * got.model_calls
    assert sum(c[0] == "agree" for c in spy.calls) == got.model_calls
    same = dmkernels.generate(ToyModel(), prompts(), parallel=D.SingleProcess(), **kw)
    assert torch.equal(same.sequences, want.sequences)
