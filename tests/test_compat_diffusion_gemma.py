"""dmkernels.compat.diffusion_gemma against transformers' DiffusionGemma step.

Step level: both steps driven with the same logits (a stub decoder) and the same
sampled canvas (upstream's ``torch.multinomial`` and our ``denoise_stats`` token
are replaced by one given sample), over several steps with finished rows, every
stopping setting, logits processors in front of the temperature, f32 and bf16
logits and embeddings: identical argmax canvas, self-conditioning logits (bit for
bit), finished rows, stopping history and, away from the documented boundary
cases, accept mask. Sampling: a frequency test of the sampled tokens against
upstream's multinomial. Whole ``generate`` on a tiny random DiffusionGemma:
identical outputs where the public code is deterministic (forced argmax, EOS and
padding, streamer, tokens_per_forward), the arguments upstream takes, stopping,
no host sync, the buffers' contracts, unpatch, and the errors.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

pytest.importorskip("transformers.models.diffusion_gemma", reason="needs transformers with DiffusionGemma")

from transformers import TopKLogitsWarper  # noqa: E402
from transformers.models.diffusion_gemma import generation_diffusion_gemma as gen  # noqa: E402

import dmkernels  # noqa: E402
from dmkernels import _extension, ops  # noqa: E402
from dmkernels.bench.diffusion_gemma import tiny_model  # noqa: E402
from dmkernels.compat import diffusion_gemma as dg  # noqa: E402
from dmkernels.testing import HostSyncError, forbid_host_sync  # noqa: E402
from parity_harness import assert_different_distribution, assert_same_distribution, one_thread  # noqa: E402,F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:dmkernels. running")]

V = 512
C = 16  # canvas length of the tiny model
PAD, EOS = 0, 1
Mixin = gen.DiffusionGemmaGenerationMixin


# ----------------------------------------------------------------------------- the tiny model


def tiny_diffusion_gemma(vocab_size: int = V, canvas_length: int = C, seed: int = 0):
    """The benchmark's tiny random-weight DiffusionGemmaForBlockDiffusion (2 layers,
    width 64, a tiny vision tower), small enough for CPU tests."""
    return tiny_model(vocab_size, canvas_length, seed=seed)


@pytest.fixture(scope="module")
def model():
    return tiny_diffusion_gemma()


@pytest.fixture
def patched(model):
    dg.patch(model)
    yield model
    dg.unpatch(model)


def _prompt(batch=2, length=5, pad_rows=(0, 2)):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V - 8, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, n in enumerate(pad_rows[:batch]):
        ids[row, :n], mask[row, :n] = PAD, 0
    return ids, mask


class DraftStreamer:
    """Records what generate streams: put (prompt and committed canvases) and
    put_draft (the argmax canvas after every step)."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def put_draft(self, value):
        self.calls.append(("draft", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def _same_calls(a, b):
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert (x is None and y is None) or torch.equal(x, y)


# ----------------------------------------------------------------------------- step level: parity


def _entropies(p):
    return torch.distributions.Categorical(logits=p).entropy()


def _clear_rows(p, bound, rel):
    """Per row of the processed logits ``p`` [B, C, V]: is upstream's accept mask
    away from the boundary cases (no prefix sum within ``rel`` of the bound, no
    tied entropies at the cut)? There both sides must agree exactly."""
    h = _entropies(p).double()
    s = h.sort(-1).values
    before = s.cumsum(-1) - s
    near = ((before - bound).abs() <= rel * bound).any(-1)
    k = (before <= bound).sum(-1, keepdim=True)
    last, first_out = s.gather(-1, (k - 1).clamp_min(0)), s.gather(-1, k.clamp_max(s.shape[-1] - 1))
    tied = ((first_out - last) <= rel * first_out.clamp_min(1e-3)).squeeze(-1) & (k.squeeze(-1) < s.shape[-1])
    return ~near & ~tied


def _mean_clear(p, threshold, rel):
    """Every row's mean entropy away from the stopping threshold."""
    return bool(((_entropies(p).float().mean(-1) - threshold).abs() > rel * threshold).all())


class _MaskAndStep:
    """A user processor: -inf on some columns, a step-dependent logit on another."""

    def __init__(self, columns):
        self.columns = columns

    def __call__(self, input_ids, scores, cur_step):
        out = scores.clone()
        out[..., self.columns] = float("-inf")
        out[..., 40] -= cur_step.to(scores.dtype)
        return out


def _processors(kind, n):
    temp = gen.LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=n)
    user = _MaskAndStep(torch.tensor([5, 17, 200]))
    top_k = TopKLogitsWarper(top_k=40)  # transformers' own, called without cur_step
    procs = {"none": [], "temperature": [temp], "user+temperature": [user, top_k, temp],
             "temperature+user": [temp, user]}
    return gen.LogitsProcessorList(procs[kind])


def _scenario_logits(n_steps, B, dtype, seed):
    """Per step [B, C, V] logits: row 0 sharp and the same every step (stable and
    confident), row 1 flat (never confident), other rows sharp but changing.
    Each position gets its own spread, so entropies are spread out."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.empty(B, C, 1).uniform_(1.0, 6.0, generator=g)
    scale[0] = 30.0 + torch.rand(C, 1, generator=g)
    scale[1] = torch.empty(C, 1).uniform_(0.3, 1.5, generator=g)
    fixed = torch.randn(C, V, generator=g)
    steps = []
    for _ in range(n_steps):
        x = torch.randn(B, C, V, generator=g) * scale
        x[0] = fixed * scale[0]
        steps.append(x.to(dtype))
    return steps


class _Stub:
    """decoder_forward returning the scenario's logits, recording its inputs."""

    def __init__(self, logits):
        self.logits, self.i, self.seen = logits, 0, []

    def __call__(self, decoder_input_ids, self_conditioning_logits, **kwargs):
        sc = self_conditioning_logits
        self.seen.append((decoder_input_ids.clone(), None if sc is None else sc.clone()))
        self.i += 1
        return types.SimpleNamespace(logits=self.logits[self.i - 1].clone())


def _run_both(model, monkeypatch, logits, samples, renoise, procs, stopping, bound):
    """Drive upstream's step and ours over the scenario; returns per-step outputs."""
    n, B = len(logits), logits[0].shape[0]
    out = {}
    for side in ("upstream", "ours"):
        sampler = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=bound), canvas_length=C,
                                          vocab_size=V, max_denoising_steps=n)
        crit = None if stopping is None else gen.StableAndConfidentStoppingCriteria(*stopping)
        stub = _Stub(logits)
        canvas = torch.randint(0, V, (B, C), generator=torch.Generator().manual_seed(1))
        argmax, sc = canvas, None
        finished = torch.zeros(B, dtype=torch.bool)
        ids = torch.randint(0, V, (B, 7), generator=torch.Generator().manual_seed(2))
        rec = []
        for i, cur_step in enumerate(reversed(range(1, n + 1))):
            kw = dict(decoder_forward=stub, current_canvas=canvas, argmax_canvas=argmax, input_ids=ids,
                      decoder_position_ids=None, self_conditioning_logits=sc, mask_mapping=None, cache=None,
                      finished_denoising=finished, cur_step=cur_step, sampler=sampler, logits_processor=procs,
                      diffusion_stopping_criteria=crit)
            before = finished.clone()
            with monkeypatch.context() as m:
                if side == "upstream":
                    m.setattr(torch, "multinomial", lambda probs, num_samples, s=samples[i]: s.reshape(-1, 1).clone())
                    m.setattr(sampler, "initialize_canvas", lambda batch_size, device, r=renoise[i]: r.clone())
                    canvas, argmax, sc, finished = Mixin._denoising_step(model, **kw)
                else:
                    real = ops.denoise_stats

                    def given(*a, s=samples[i], **k):
                        st = real(*a, **k)
                        tok = s if k.get("frozen") is None else torch.where(k["frozen"], -1, s)
                        return dmkernels.DenoiseStats(tok, st.argmax, st.entropy)

                    m.setattr(ops, "denoise_stats", given)
                    canvas, argmax, sc, finished = dg.denoising_step(model, **kw)
            hist = None if crit is None or crit.argmax_canvas_history is None else crit.argmax_canvas_history.clone()
            rec.append(dict(canvas=canvas.clone(), input=kw["current_canvas"].clone(), argmax=argmax.clone(),
                            sc=sc.clone(), finished=finished.clone(), was_finished=before,
                            accept=sampler.accepted_token_mask.clone(), history=hist))
        out[side] = (rec, stub.seen)
    return out


@pytest.mark.parametrize("logits_dtype,emb_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                    (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("stopping", [None, (0, 0.5), (1, 0.5), (2, 0.5)], ids=["none", "s0", "s1", "s2"])
@pytest.mark.parametrize("procs", ["temperature", "none", "user+temperature", "temperature+user"])
def test_step_parity(model, monkeypatch, logits_dtype, emb_dtype, stopping, procs):
    n, B = 5, 4
    bound = 1.5
    # Upstream's entropies and sums are in the logits' dtype: for bf16 logits its
    # stopping means are rounded to bf16 (and the fused op's are not).
    rel = 1e-4 if logits_dtype == torch.float32 else 0.2
    monkeypatch.setattr(model.model.decoder.embed_tokens.weight, "data",
                        model.model.decoder.embed_tokens.weight.data.to(emb_dtype))
    assert model.model.decoder.embed_tokens.weight.dtype == emb_dtype
    processors = _processors(procs, n)
    # Upstream's processed logits of each step; a scenario whose stopping decisions
    # are clear of the threshold (a mean entropy within rounding of it could go
    # either way, as it can between upstream on CPU and GPU).
    for seed in range(20):
        logits = _scenario_logits(n, B, logits_dtype, seed)
        processed = [processors(None, x, cur_step=torch.tensor(s, dtype=torch.int32))
                     for x, s in zip(logits, reversed(range(1, n + 1)))]
        if stopping is None or all(_mean_clear(p, stopping[1], rel) for p in processed):
            break
    else:
        pytest.fail("no scenario clear of the stopping threshold in 20 seeds")
    # Upstream's acceptance rule (its own accept_canvas) on the float32 processed
    # logits. For float32 logits that is what its step does. For bf16 logits its
    # step rounds x / T to bf16 first and takes the entropies of that rounded
    # distribution in bf16, while the fused op samples and measures x / T unrounded
    # (the model's logits are float32: only a processor or this stub gives bf16).
    # The processors in front of a final temperature run in torch on the logits.
    fused = len(processors) and type(processors[-1]) is gen.LinearTemperatureScheduleLogitsProcessor
    front = gen.LogitsProcessorList(processors[:-1] if fused else processors)
    processed32 = []
    for x, s in zip(logits, reversed(range(1, n + 1))):
        step = torch.tensor(s, dtype=torch.int32)
        y = front(None, x, cur_step=step).float()
        processed32.append(processors[-1](None, y, cur_step=step) if fused else y)
    rule = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=bound), canvas_length=C,
                                   vocab_size=V, max_denoising_steps=n)
    want_accept = []
    for p in processed32:
        rule.accept_canvas(torch.zeros(B, C, dtype=torch.int64), torch.zeros(B, C, dtype=torch.int64), p, 0)
        want_accept.append(rule.accepted_token_mask.clone())
    clear = [_clear_rows(p, bound, 1e-4) for p in processed32]
    g = torch.Generator().manual_seed(seed + 100)
    samples = [torch.randint(0, V, (B, C), generator=g) for _ in range(n)]
    renoise = [torch.randint(0, V, (B, C), generator=g) for _ in range(n)]
    both = _run_both(model, monkeypatch, logits, samples, renoise, processors, stopping, bound)
    (up, up_seen), (us, us_seen) = both["upstream"], both["ours"]

    for i, (a, b) in enumerate(zip(up, us)):
        where = f"step {i}"
        assert torch.equal(a["argmax"], b["argmax"]), where
        assert a["sc"].dtype == b["sc"].dtype == emb_dtype, where
        assert torch.equal(a["sc"], b["sc"]), where  # bit for bit, finished rows included
        assert torch.equal(a["finished"], b["finished"]), where
        assert (a["history"] is None) == (b["history"] is None), where
        if a["history"] is not None:
            assert torch.equal(a["history"], b["history"]), where
        live = ~a["was_finished"] if stopping is not None else torch.ones(B, dtype=torch.bool)
        compared = live & clear[i]
        assert torch.equal(want_accept[i][compared], b["accept"][compared]), where
        if logits_dtype == torch.float32:
            assert torch.equal(a["accept"][compared], b["accept"][compared]), where
        for side in (a, b):
            acc = side["accept"] & live[:, None]
            assert torch.equal(side["canvas"][acc], samples[i][acc]), where  # the given sample where accepted
            assert torch.equal(side["canvas"][~live], side["input"][~live]), where  # finished rows frozen
        renoised = ~b["accept"] & live[:, None]
        assert ((b["canvas"][renoised] >= 0) & (b["canvas"][renoised] < V)).all(), where
        assert b["canvas"].dtype == torch.int64
    # The model saw the same self-conditioning input at every step.
    for (_, x), (_, y) in zip(up_seen, us_seen):
        assert (x is None and y is None) or torch.equal(x, y)

    # The scenario exercises what it names; most masks are compared.
    compared = torch.stack(clear).float().mean()
    assert compared >= 0.9, compared
    accepted = torch.stack([r["accept"].sum(-1) for r in up])
    assert (accepted > 1).any() and (accepted < C).any(), accepted
    if stopping is not None:
        fin = up[-1]["finished"]
        assert fin[0] and not fin[1], "row 0 should finish and row 1 not"
        assert any(r["was_finished"].any() for r in up), "no step ran with a finished row"


def test_step_renoise_differs_per_step_and_seed(model):
    """Our own sample and re-noise tokens: fresh per step (the offset advances) and
    per sampler (the seed is drawn once per generate), fixed by torch.manual_seed."""
    B = 2
    x = torch.randn(B, C, V)

    def run(seed, steps=2):
        torch.manual_seed(seed)
        sampler = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=0.5), canvas_length=C,
                                          vocab_size=V, max_denoising_steps=steps)
        canvas = torch.zeros(B, C, dtype=torch.int64)
        out, sc = [], None
        for s in reversed(range(1, steps + 1)):
            canvas, _, sc, _ = dg.denoising_step(
                model, decoder_forward=lambda **k: types.SimpleNamespace(logits=x), current_canvas=canvas,
                argmax_canvas=canvas, input_ids=None, decoder_position_ids=None, self_conditioning_logits=sc,
                mask_mapping=None, cache=None, finished_denoising=torch.zeros(B, dtype=torch.bool), cur_step=s,
                sampler=sampler, logits_processor=gen.LogitsProcessorList(), diffusion_stopping_criteria=None)
            out.append(canvas.clone())
        return out

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------- step level: sampling


def test_sampling_distribution(model):
    """Every position accepted (a huge bound): the canvas is the sample. Its
    tokens follow upstream's torch.multinomial(softmax(x / T)), and the test tells
    T from 2T apart."""
    B, n = 4, 12
    row = torch.full((V,), -30.0)
    row[[3, 50, 51, 300, 301, 511]] = torch.tensor([2.0, 1.2, 1.0, 0.2, -0.5, 1.5])
    x = row.expand(B, C, V).clone()

    def draws(step_fn, t_max):
        torch.manual_seed(5)
        procs = gen.LogitsProcessorList(
            [gen.LinearTemperatureScheduleLogitsProcessor(t_min=t_max / 2, t_max=t_max, max_denoising_steps=n)])
        sampler = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=1e9), canvas_length=C,
                                          vocab_size=V, max_denoising_steps=n)
        canvas, sc, got = torch.zeros(B, C, dtype=torch.int64), None, []
        for _ in range(n):  # the same step (T) every time: one distribution
            canvas, _, sc, _ = step_fn(
                model, decoder_forward=lambda **k: types.SimpleNamespace(logits=x.clone()), current_canvas=canvas,
                argmax_canvas=canvas, input_ids=None, decoder_position_ids=None, self_conditioning_logits=sc,
                mask_mapping=None, cache=None, finished_denoising=torch.zeros(B, dtype=torch.bool), cur_step=n,
                sampler=sampler, logits_processor=procs, diffusion_stopping_criteria=None)
            assert sampler.accepted_token_mask.all()
            got.append(canvas.reshape(-1, 1).clone())
        return torch.cat(got)

    ours, theirs = draws(dg.denoising_step, 0.8), draws(Mixin._denoising_step, 0.8)
    assert_same_distribution(ours, theirs)
    assert_different_distribution(ours, draws(Mixin._denoising_step, 1.6))


# ----------------------------------------------------------------------------- step level: contracts and errors


def _direct(model, x, sc=None, procs=(), **over):
    B = x.shape[0]
    kw = dict(decoder_forward=lambda **k: types.SimpleNamespace(logits=x), current_canvas=torch.zeros(B, C,
              dtype=torch.int64), argmax_canvas=torch.zeros(B, C, dtype=torch.int64), input_ids=None,
              decoder_position_ids=None, self_conditioning_logits=sc, mask_mapping=None, cache=None,
              finished_denoising=torch.zeros(B, dtype=torch.bool), cur_step=2,
              sampler=gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=0.1), canvas_length=C,
                                              vocab_size=V, max_denoising_steps=2),
              logits_processor=gen.LogitsProcessorList(procs), diffusion_stopping_criteria=None)
    kw.update(over)
    return dg.denoising_step(model, **kw)


def test_step_never_writes_caller_tensors(model):
    x = torch.randn(2, C, V)
    sc = torch.randn(2, C, V)
    canvas = torch.randint(0, V, (2, C), dtype=torch.int32)
    keep = (x.clone(), sc.clone(), canvas.clone())
    crit = gen.StableAndConfidentStoppingCriteria(1, 0.5)
    fin = torch.tensor([True, False])
    new, am, out, _ = _direct(model, x, sc=sc, current_canvas=canvas, argmax_canvas=canvas, finished_denoising=fin,
                              diffusion_stopping_criteria=crit)
    assert torch.equal(x, keep[0]) and torch.equal(sc, keep[1]) and torch.equal(canvas, keep[2])
    assert out is not sc and out.data_ptr() != sc.data_ptr()
    assert torch.equal(out[0], sc[0]) and torch.equal(out[1], x[1])  # the finished row keeps its logits
    assert new.dtype == torch.int64 and torch.equal(new[0], canvas[0].long()) and torch.equal(am[0], canvas[0].long())


def test_step_reuses_its_buffer(model):
    """From the second step on, the self-conditioning logits are written into the
    buffer the model just consumed: no new [B, C, V] tensor per step."""
    x = torch.randn(2, C, V)
    procs = [gen.LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=2)]
    sampler = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=0.1), canvas_length=C,
                                      vocab_size=V, max_denoising_steps=2)
    _, _, first, _ = _direct(model, x, procs=procs, sampler=sampler)
    ptr = first.data_ptr()
    _, _, second, _ = _direct(model, x, sc=first, procs=procs, sampler=sampler, cur_step=1)
    assert second is first and second.data_ptr() == ptr
    assert torch.equal(second, procs[0](None, x, cur_step=torch.tensor(1, dtype=torch.int32)))


@pytest.mark.parametrize("bound", [0.0, -0.5, float("nan"), float("inf"), True, "0.1"])
def test_step_refuses_bad_entropy_bound(model, bound):
    calls = []
    sampler = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=0.1), canvas_length=C,
                                      vocab_size=V, max_denoising_steps=2)
    sampler.entropy_bound = bound  # the config checks only at construction
    with pytest.raises(ValueError, match="entropy_bound"):
        _direct(model, torch.randn(1, C, V), sampler=sampler,
                decoder_forward=lambda **k: calls.append(1))
    assert not calls, "the model ran before the check"


@pytest.mark.parametrize("t_min,t_max", [(-1.0, 0.5), (0.0, 1e-35), (0.0, 1e-50), (0.1, float("nan")),
                                         (0.1, float("inf"))])
def test_step_refuses_bad_temperature(model, t_min, t_max):
    calls = []
    procs = [gen.LinearTemperatureScheduleLogitsProcessor(t_min=t_min, t_max=t_max, max_denoising_steps=2)]
    with pytest.raises(ValueError, match="temperature") as e:
        _direct(model, torch.randn(1, C, V), procs=procs, cur_step=1, decoder_forward=lambda **k: calls.append(1))
    assert "t_min" in str(e.value) and not calls


@pytest.mark.parametrize("bad", ["nan", "inf", "all -inf"])
def test_step_refuses_rows_without_distribution(model, bad):
    x = torch.randn(2, C, V)
    if bad == "nan":
        x[1, 3, 7] = float("nan")
    elif bad == "inf":
        x[0, 0, 1] = float("inf")
    else:
        x[1, 9] = float("-inf")
    with pytest.raises(ValueError, match=r"dmkernels\.compat\.diffusion_gemma.*logits"):
        _direct(model, x)
    # A finished row is not read (with a stopping criterion, as upstream freezes it).
    row = 1 if bad != "inf" else 0
    fin = torch.zeros(2, dtype=torch.bool)
    fin[row] = True
    _direct(model, x, sc=torch.zeros(2, C, V), finished_denoising=fin,
            diffusion_stopping_criteria=gen.StableAndConfidentStoppingCriteria(1, 0.5))


def test_step_refuses_other_stopping_criteria(model):
    class Mine(gen.DiffusionGemmaAdaptiveStopping):
        def __call__(self, argmax_canvas, logits, **kwargs):
            return torch.zeros(argmax_canvas.shape[0], dtype=torch.bool)

    with pytest.raises(TypeError, match="diffusion_stopping_criteria"):
        _direct(model, torch.randn(1, C, V), diffusion_stopping_criteria=Mine())


# ----------------------------------------------------------------------------- whole generate


class _ForceTargets:
    """A logits processor that makes the argmax canvas a function of the canvas
    index alone (+1000 on a target token per position, far above the soft-capped
    logits): then the committed tokens, the stopping decisions and the
    finalisation are deterministic, and patched and unpatched generate must agree."""

    def __init__(self, prompt_len, batch, canvases, eos_at=None):
        g = torch.Generator().manual_seed(11)
        self.prompt_len = prompt_len
        self.targets = torch.randint(3, V - 8, (canvases, batch, C), generator=g)
        if eos_at is not None:
            k, b, pos = eos_at
            self.targets[k, b, pos] = EOS
        self.bias = torch.zeros(canvases, batch, C, V)
        self.bias.scatter_(-1, self.targets[..., None], 1000.0)

    def __call__(self, input_ids, scores, cur_step):
        k = (input_ids.shape[1] - self.prompt_len) // C
        return scores + self.bias[k]


def _generate(model, seed=0, **kw):
    torch.manual_seed(seed)
    return model.generate(**kw)


@pytest.mark.parametrize("return_dict", [True, False])
def test_generate_identical_where_deterministic(model, return_dict):
    ids, mask = _prompt()
    runs = []
    for patch in (False, True):
        if patch:
            dg.patch(model)
        try:
            streamer = DraftStreamer()
            force = _ForceTargets(ids.shape[1], 2, 3, eos_at=(1, 0, 5))
            out = _generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=3 * C, max_denoising_steps=6,
                            logits_processor=gen.LogitsProcessorList([force]), pad_token_id=PAD, eos_token_id=EOS,
                            streamer=streamer, return_dict_in_generate=return_dict)
        finally:
            dg.unpatch(model)
        runs.append((out, streamer.calls))
    (a, calls_a), (b, calls_b) = runs
    assert type(a) is type(b)
    seq_a, seq_b = (a.sequences, b.sequences) if return_dict else (a, b)
    assert torch.equal(seq_a, seq_b)
    if return_dict:
        assert isinstance(b, gen.DiffusionGemmaGenerationOutput)
        assert torch.equal(a.tokens_per_forward, b.tokens_per_forward)
    _same_calls(calls_a, calls_b)
    # The case exercises what it names: EOS then padding in row 0, stopping after two steps.
    row0 = seq_b[0, ids.shape[1]:]
    assert row0[C + 5] == EOS and (row0[C + 6:] == PAD).all() and (row0[:C + 5] != PAD).all()
    assert (seq_b[1, ids.shape[1]:] != PAD).all()
    assert sum(k == "draft" for k, _ in calls_b) == 2 * 3


@pytest.mark.parametrize("user_canvas", [False, True])
def test_generate_sampling_runs(patched, user_canvas):
    """Random weights: the patched generate takes upstream's arguments (B = 2 with
    left padding, decoder_input_ids, a draft streamer), returns upstream's types,
    streams as often, hands the user's canvas to the first decoder call without
    writing it, and the same seed gives the same tokens."""
    model = patched
    ids, mask = _prompt()
    canvas = torch.randint(0, V, (2, C), generator=torch.Generator().manual_seed(4))
    keep = canvas.clone()
    seen = []
    real_forward = model.forward

    def forward(**kw):
        seen.append((kw["decoder_input_ids"].clone(), kw.get("self_conditioning_logits")))
        return real_forward(**kw)

    model.forward = forward
    try:
        extra = dict(decoder_input_ids=canvas) if user_canvas else {}
        streamer = DraftStreamer()
        out = _generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=4,
                        streamer=streamer, **extra)
        again = _generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=4,
                          **({"decoder_input_ids": canvas} if user_canvas else {}))
        other = _generate(model, seed=1, input_ids=ids, attention_mask=mask, max_new_tokens=2 * C,
                          max_denoising_steps=4, return_dict_in_generate=False, **extra)
    finally:
        del model.forward
    assert isinstance(out, gen.DiffusionGemmaGenerationOutput) and isinstance(other, torch.Tensor)
    assert out.sequences.shape == (2, ids.shape[1] + 2 * C) and out.sequences.dtype == torch.int64
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids)
    assert ((out.sequences >= 0) & (out.sequences < V)).all()
    assert torch.equal(out.tokens_per_forward, torch.full((2,), 2 * C / 8))
    assert torch.equal(out.sequences, again.sequences) and not torch.equal(out.sequences, other)
    assert [k for k, _ in streamer.calls] == ["put"] + (["draft"] * 4 + ["put"]) * 2 + ["end"]
    assert torch.equal(canvas, keep)
    assert torch.equal(seen[0][0], canvas) == user_canvas
    # From the second step of a canvas on, the model gets the same buffer back.
    ptrs = {sc.data_ptr() for _, sc in seen[1:4]}
    assert seen[0][1] is None and len(ptrs) == 1


def test_generate_stopping(model):
    """stability_threshold=0 and a confidence threshold above any entropy: every
    canvas stops after its first step, patched as unpatched."""
    ids, mask = _prompt()
    results = []
    for patch in (False, True):
        if patch:
            dg.patch(model)
        try:
            streamer = DraftStreamer()
            out = _generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=3 * C, max_denoising_steps=6,
                            stability_threshold=0, confidence_threshold=100.0, streamer=streamer)
        finally:
            dg.unpatch(model)
        results.append((out, [k for k, _ in streamer.calls]))
    (a, ka), (b, kb) = results
    assert ka == kb == ["put"] + ["draft", "put"] * 3 + ["end"]
    assert torch.equal(a.tokens_per_forward, b.tokens_per_forward)
    assert torch.equal(b.tokens_per_forward, torch.full((2,), float(3 * C) / 3))


def test_generate_keeps_user_self_conditioning(patched):
    ids, _ = _prompt(pad_rows=())
    sc = torch.randn(2, C, V)
    keep = sc.clone()
    out = _generate(patched, input_ids=ids, max_new_tokens=C, max_denoising_steps=3, self_conditioning_logits=sc)
    assert torch.equal(sc, keep) and out.sequences.shape == (2, ids.shape[1] + C)


@pytest.fixture
def native(monkeypatch):
    """The compiled CPU kernels (the references read CPU scalars on the host,
    which the guard cannot tell from a sync)."""
    cpu = torch.device("cpu")
    if not all(_extension.has_kernel(op, cpu) for op in ("denoise_stats", "renoise_", "select_entropy_bounded")):
        pytest.skip(f"no compiled CPU kernels: {_extension.REASON}")
    monkeypatch.setenv("DMKERNELS_BACKEND", "native")


def test_generate_no_host_sync_in_step(patched, native):
    ids, mask = _prompt()
    force = _ForceTargets(ids.shape[1], 2, 2)
    with forbid_host_sync():
        out = _generate(patched, input_ids=ids, attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=3,
                        logits_processor=gen.LogitsProcessorList([force]))
    assert out.sequences.shape == (2, ids.shape[1] + 2 * C)

    # The guard is live inside the step: a processor that syncs is caught.
    def syncing(input_ids, scores):
        return scores * float(scores[0, 0, 0])

    with forbid_host_sync(), pytest.raises(HostSyncError):
        _generate(patched, input_ids=ids, max_new_tokens=C, max_denoising_steps=2,
                  logits_processor=gen.LogitsProcessorList([syncing]))


@pytest.mark.parametrize("setting", ["entropy_bound", "t_max"])
def test_generate_refuses_bad_settings_before_the_model(patched, setting):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (patched.model.encoder, patched)]
    try:
        ids, _ = _prompt(pad_rows=())
        if setting == "entropy_bound":
            config = gen.EntropyBoundSamplerConfig(entropy_bound=0.1)
            config.entropy_bound = 0.0
            kw = dict(sampler_config=config)
        else:
            kw = dict(t_min=0.0, t_max=1e-35)
        with pytest.raises(ValueError, match=setting):
            _generate(patched, input_ids=ids, max_new_tokens=C, max_denoising_steps=2, **kw)
    finally:
        for h in hooks:
            h.remove()
    assert not calls


def test_generate_refuses_nan_logits(patched):
    def poison(input_ids, scores):
        return scores.index_fill(1, torch.tensor([2]), float("nan"))

    ids, _ = _prompt(pad_rows=())
    with pytest.raises(ValueError, match="logits"):
        _generate(patched, input_ids=ids, max_new_tokens=C, max_denoising_steps=2,
                  logits_processor=gen.LogitsProcessorList([poison]))


# ----------------------------------------------------------------------------- the GPU path, on the CPU


@pytest.fixture
def device_path(monkeypatch):
    """The step as it runs on a GPU (noise offset in a device tensor, a device flag
    for rows without a distribution, read at the end of the canvas), here on CPU
    tensors."""
    monkeypatch.setattr(dg, "_reads_free", lambda device: False)


def test_device_path_same_tokens(patched, monkeypatch):
    ids, mask = _prompt()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=3)
    host = _generate(patched, **kw).sequences
    with monkeypatch.context() as m:
        m.setattr(dg, "_reads_free", lambda device: False)
        dev = _generate(patched, **kw).sequences
    assert torch.equal(host, dev)  # the rng tensor carries the same (seed, offset) as the host ints


def test_device_path_reports_bad_rows_at_canvas_end(patched, device_path):
    steps = []

    def poison(input_ids, scores):
        steps.append(1)
        return scores.index_fill(1, torch.tensor([2]), float("nan"))

    ids, _ = _prompt(pad_rows=())
    with pytest.raises(ValueError, match=r"diffusion_gemma\.generate: logits"):
        _generate(patched, input_ids=ids, max_new_tokens=2 * C, max_denoising_steps=3,
                  logits_processor=gen.LogitsProcessorList([poison]))
    # All steps of the first canvas ran (the canvas stayed valid for the model:
    # token -1 would fail its embedding lookup), then the flag was read.
    assert len(steps) == 3


# ----------------------------------------------------------------------------- patch / unpatch


def test_unpatch_restores_upstream(model):
    ids, mask = _prompt()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=3)
    fresh = tiny_diffusion_gemma()  # same weights, never patched
    want = _generate(fresh, **kw).sequences
    assert dg.patch(model) is model and dg.patch(model) is model  # twice: a no-op
    assert "_denoising_step" in model.__dict__
    patched_out = _generate(model, **kw).sequences
    assert dg.unpatch(model) is model and dg.unpatch(model) is model  # twice: a no-op
    assert not {"_denoising_step", "_prepare_sampler", "_finalize_canvas"} & set(model.__dict__)
    assert torch.equal(_generate(model, **kw).sequences, want)
    assert not torch.equal(patched_out, want)  # other random streams while patched


def test_patch_keeps_earlier_instance_attributes():
    m = tiny_diffusion_gemma()
    mine = types.MethodType(lambda self, **kw: None, m)
    object.__setattr__(m, "_denoising_step", mine)
    dg.patch(m)
    assert m.__dict__["_denoising_step"] is not mine
    dg.unpatch(m)
    assert m.__dict__["_denoising_step"] is mine


def test_patch_refuses_other_models():
    with pytest.raises(TypeError, match=r"diffusion_gemma\.patch: model must be"):
        dg.patch(torch.nn.Linear(2, 2))


def test_patch_refuses_incompatible_transformers(model, monkeypatch):
    def _denoising_step(self, decoder_forward, current_canvas, cur_step, **model_kwargs):
        pass

    monkeypatch.setattr(Mixin, "_denoising_step", _denoising_step)
    with pytest.raises(RuntimeError, match=r"transformers .* differs .*_denoising_step"):
        dg.patch(model)
    assert "_denoising_step" not in model.__dict__


def test_patch_without_diffusion_gemma(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.models.diffusion_gemma", None)  # an older transformers
    with pytest.raises(RuntimeError, match="needs transformers with DiffusionGemma"):
        dg.patch(torch.nn.Linear(2, 2))
