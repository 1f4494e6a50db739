"""dmkernels.compat.diffusers.BlockRefinementScheduler against diffusers' own
BlockRefinementScheduler: the real LLaDA2Pipeline run both ways on a tiny random
LLaDA2 (greedy: same sequences and every callback tensor), step-level parity
over odd cases and every backend, the sampling distribution by frequency test,
the config round trip, the errors, and no host sync inside a step."""
from __future__ import annotations

import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="pip install 'dmkernels[diffusers]'")

from diffusers import BlockRefinementScheduler as DiffusersScheduler  # noqa: E402
from diffusers import LLaDA2Pipeline  # noqa: E402

from dmkernels.compat import diffusers as compat  # noqa: E402
from dmkernels.compat.diffusers import BlockRefinementScheduler  # noqa: E402
from dmkernels.models import LLaDA2ForBlockDiffusion, llada2_tiny_config  # noqa: E402
from dmkernels.testing import HostSyncError, forbid_host_sync, step_scope  # noqa: E402
from parity_harness import assert_different_distribution, assert_same_distribution, one_thread  # noqa: E402,F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:dmkernels. running")]

V = 512
MASK = V - 1  # llada2_tiny_config: mask V - 1 (logit pinned to -inf), EOS = pad = V - 2


# ----------------------------------------------------------------------------- pipeline (greedy)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(1234)
    model = LLaDA2ForBlockDiffusion(llada2_tiny_config(V)).eval()
    p = LLaDA2Pipeline(model=model, scheduler=DiffusersScheduler(block_length=8), tokenizer=None)
    p.set_progress_bar_config(disable=True)
    return p


def _prompts():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V - 2, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0  # left padding with id 0 (not the EOS: see check_eos_finished's prompt rule)
    return ids, mask


def _run(pipe, scheduler_class, **kw):
    """Sequences and every callback tensor of every step (cloned: block_x is a live view)."""
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    steps = []

    def record(p, i, t, tensors):
        steps.append({"step": i, "timestep": t, **{k: v.clone() for k, v in tensors.items()}})
        return {}

    ids, mask = _prompts()
    out = pipe(input_ids=ids, attention_mask=mask, gen_length=20, block_length=8, num_inference_steps=4,
               mask_token_id=MASK, output_type="seq", callback_on_step_end=record,
               callback_on_step_end_tensor_inputs=list(LLaDA2Pipeline._callback_tensor_inputs), **kw)
    return out.sequences, steps


def _assert_same_run(a, b):
    seq_a, steps_a = a
    seq_b, steps_b = b
    assert torch.equal(seq_a, seq_b)
    assert len(steps_a) == len(steps_b)
    for sa, sb in zip(steps_a, steps_b):
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert sa[key].dtype == sb[key].dtype, key
                assert torch.equal(sa[key], sb[key]), (key, sa["step"])
            else:
                assert sa[key] == sb[key], key


@pytest.mark.parametrize("editing", [None, 0.3], ids=["no-edit", "edit"])
@pytest.mark.parametrize("eos_early_stop", [False, True], ids=["no-eos", "eos"])
def test_pipeline_greedy_identical(pipe, editing, eos_early_stop):
    kw = dict(temperature=0.0, threshold=0.5, editing_threshold=editing, max_post_steps=3)
    plain = _run(pipe, DiffusersScheduler, eos_early_stop=False, **kw)
    eos = None
    if eos_early_stop:
        # An EOS the model produces: a token of row 0's second generated block.
        eos = int(plain[0][0, 10])
        kw.update(eos_token_id=eos)
    theirs = _run(pipe, DiffusersScheduler, eos_early_stop=eos_early_stop, **kw)
    with forbid_host_sync():  # the pipeline's own syncs lie outside the step
        ours = _run(pipe, BlockRefinementScheduler, eos_early_stop=eos_early_stop, **kw)
    assert type(pipe.scheduler) is BlockRefinementScheduler
    _assert_same_run(theirs, ours)

    # The cases exercise what they name.
    steps = theirs[1]
    assert any((s["transfer_index"].sum(-1) > 2).any() for s in steps), "threshold rule never fired"
    assert any(((s["transfer_index"].sum(-1) < 2) & (s["active_block"].sum(-1) >= 2)).any() for s in steps) or \
        any((s["transfer_index"].sum(-1) == 2).any() for s in steps), "top-k rule never fired"
    if editing:
        assert any(s["editing_transfer_index"].any() for s in steps), "no edit happened"
    else:
        assert not any(s["editing_transfer_index"].any() for s in steps)
    if eos_early_stop:
        # Row 0 froze at its EOS: its later blocks stay masked.
        assert (theirs[0][0] == MASK).any() and not torch.equal(theirs[0], plain[0])


def test_pipeline_sampling_runs_without_sync_and_reproducibly(pipe):
    # The distribution is tested step by step below; here the whole pipeline samples
    # through our step (no host sync inside it) and a seeded generator reproduces it.
    kw = dict(temperature=0.9, top_k=50, top_p=0.9, sampling_method="multinomial", threshold=0.5,
              editing_threshold=0.3, max_post_steps=2, eos_early_stop=False)
    with forbid_host_sync():
        runs = [_run(pipe, BlockRefinementScheduler, generator=torch.Generator().manual_seed(s), **kw)
                for s in (0, 0, 1)]
    _assert_same_run(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[2][0])
    assert not (runs[0][0] == MASK).any()


def test_pipeline_scheduler_swap_registers_our_class(pipe):
    pipe.scheduler = BlockRefinementScheduler.from_config(pipe.scheduler.config)
    assert pipe.config.scheduler == ("dmkernels.compat.diffusers", "BlockRefinementScheduler")
    assert isinstance(pipe.scheduler, DiffusersScheduler)
    pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config)


# ----------------------------------------------------------------------------- config


def test_class_name_and_config_round_trip(tmp_path):
    assert BlockRefinementScheduler.__name__ == "BlockRefinementScheduler"
    assert BlockRefinementScheduler.__qualname__ == "BlockRefinementScheduler"
    assert issubclass(BlockRefinementScheduler, DiffusersScheduler)
    base = DiffusersScheduler(block_length=16, num_inference_steps=8, threshold=0.8, editing_threshold=0.4,
                              minimal_topk=2)
    ours = BlockRefinementScheduler.from_config(base.config)
    assert type(ours) is BlockRefinementScheduler

    def fields(s):
        return {k: v for k, v in s.config.items() if not k.startswith("_")}

    assert fields(ours) == fields(base) and len(fields(base)) == 5
    ours.save_config(tmp_path)
    again = BlockRefinementScheduler.from_pretrained(tmp_path)
    assert type(again) is BlockRefinementScheduler and fields(again) == fields(base)
    # A saved config names the class diffusers knows, so diffusers loads it back too.
    back = DiffusersScheduler.from_pretrained(tmp_path)
    assert type(back) is DiffusersScheduler and fields(back) == fields(base)
    assert again.config["_class_name"] == "BlockRefinementScheduler"


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers.schedulers.scheduling_block_refinement", None)
    with pytest.raises(ImportError, match=r"pip install 'dmkernels\[diffusers\]'"):
        compat._import_diffusers_scheduler()


# ----------------------------------------------------------------------------- step level (greedy)


def _schedulers(block_length, steps, **config):
    a = DiffusersScheduler(block_length=block_length, **config)
    b = BlockRefinementScheduler.from_config(a.config)
    for s in (a, b):
        s.set_timesteps(steps, block_length=block_length)
    return a, b


def _block(b, bl, masked_frac, generator):
    sample = torch.randint(0, V - 2, (b, bl), generator=generator)
    sample[torch.rand(b, bl, generator=generator) < masked_frac] = MASK
    return sample


def _assert_same_step(x, y):
    for name in ("prev_sample", "transfer_index", "editing_transfer_index", "sampled_tokens", "sampled_probs"):
        u, w = getattr(x, name), getattr(y, name)
        assert u.dtype == w.dtype and u.shape == w.shape, name
        assert torch.equal(u.cpu(), w.cpu()), name
    assert y.pred_logits is not None


STEP_CASES = [
    # (B, bl, steps, timestep, threshold, editing, prompt cols, logit dtype, logit scale)
    (3, 8, 4, 0, 0.5, None, 0, torch.float32, 3.0),
    (1, 5, 2, 1, 0.2, 0.1, 2, torch.float32, 4.0),
    (4, 7, 3, 9, 0.9, 0.5, 0, torch.bfloat16, 6.0),  # timestep past the schedule: its last entry
    (2, 4, 9, 5, 0.0, 0.05, 1, torch.float32, 2.0),  # steps > block length: commit counts of 0
    (2, 6, 3, 2, 1.5, 0.3, 0, torch.float16, 5.0),   # threshold > 1: the top-k rule only
    (5, 8, 8, 3, 0.3, 0.2, 3, torch.float32, 8.0),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=[f"case{i}" for i in range(len(STEP_CASES))])
@pytest.mark.parametrize("tensor_timestep", [False, True], ids=["int-t", "tensor-t"])
def test_step_greedy_matches_diffusers(backend, monkeypatch, case, tensor_timestep):
    monkeypatch.setenv("DMKERNELS_BACKEND", backend.name)
    b, bl, steps, t, thr, edit, prompt_cols, dtype, scale = case
    g = torch.Generator().manual_seed(b * 100 + bl)
    theirs, ours = _schedulers(bl, steps)
    for trial in range(3):
        logits = (torch.randn(b, bl, V, generator=g) * scale).to(dtype)
        logits[..., MASK] = float("-inf")
        if trial == 2:
            logits[0, 0] = 0.0  # a constant row: argmax ties to index 0
        sample = _block(b, bl, 0.6, g)
        prompt = torch.zeros(bl, dtype=torch.bool)
        prompt[:prompt_cols] = True
        sample[:, :prompt_cols] = torch.randint(0, V - 2, (prompt_cols,), generator=g)
        kw = dict(mask_token_id=MASK, temperature=0.0, threshold=thr, editing_threshold=edit, prompt_mask=prompt)
        timestep = torch.tensor(t) if tensor_timestep else t
        want = theirs.step(logits, timestep, sample.clone(), **kw)
        before = sample.clone()
        dev = backend.to((logits, sample, prompt))
        with forbid_host_sync():
            got = ours.step(dev[0], backend.to(timestep), dev[1], **{**kw, "prompt_mask": dev[2]})
        assert got.pred_logits is dev[0]
        assert torch.equal(dev[1].cpu(), before), "step must not modify sample"
        _assert_same_step(want, got)
        tup = ours.step(dev[0], t, dev[1], **{**kw, "prompt_mask": dev[2]}, return_dict=False)
        assert isinstance(tup, tuple) and len(tup) == 6 and tup[5] is dev[0]


def test_step_greedy_without_prompt_mask_and_config_defaults():
    theirs, ours = _schedulers(6, 3, threshold=0.4, editing_threshold=0.2)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, V, generator=g) * 5
    sample = _block(3, 6, 0.5, g)
    want = theirs.step(logits, 1, sample, mask_token_id=MASK)
    got = ours.step(logits, 1, sample, mask_token_id=MASK)
    _assert_same_step(want, got)
    assert want.editing_transfer_index.any() and want.transfer_index.any()


def test_step_auto_and_greedy_methods_with_temperature():
    # sampling_method="greedy" ignores the temperature; "auto" at T = 0 is greedy too.
    theirs, ours = _schedulers(8, 4)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 8, V, generator=g) * 4
    sample = _block(2, 8, 0.7, g)
    for method, t in (("greedy", 0.8), ("auto", 0.0), ("multinomial", 0.0), ("bogus", 1.0)):
        kw = dict(mask_token_id=MASK, temperature=t, sampling_method=method, threshold=0.3)
        _assert_same_step(theirs.step(logits, 0, sample, **kw), ours.step(logits, 0, sample, **kw))


def test_step_without_set_timesteps_commits_nothing():
    theirs = DiffusersScheduler(block_length=4)
    ours = BlockRefinementScheduler.from_config(theirs.config)
    logits = torch.randn(2, 4, V) * 3
    sample = torch.full((2, 4), MASK)
    _assert_same_step(theirs.step(logits, 0, sample, mask_token_id=MASK),
                      ours.step(logits, 0, sample, mask_token_id=MASK))


def test_step_inexact_probs_option():
    theirs, ours = _schedulers(8, 4)
    ours.exact_probs = False
    logits = torch.randn(3, 8, V) * 4
    sample = _block(3, 8, 0.5, torch.Generator().manual_seed(0))
    want = theirs.step(logits, 0, sample, mask_token_id=MASK, threshold=0.5)
    got = ours.step(logits, 0, sample, mask_token_id=MASK, threshold=0.5)
    assert torch.equal(want.sampled_tokens, got.sampled_tokens)
    torch.testing.assert_close(got.sampled_probs, want.sampled_probs, rtol=1e-5, atol=1e-7)


def test_uniform_mode_is_diffusers():
    theirs, ours = _schedulers(6, 3, editing_threshold=0.3)
    logits = torch.randn(2, 6, V) * 3
    sample = torch.randint(0, V, (2, 6))
    for t in range(3):
        kw = dict(mask_token_id=None, temperature=0.7, generator=None)
        a = theirs.step(logits, t, sample, **{**kw, "generator": torch.Generator().manual_seed(t)})
        b = ours.step(logits, t, sample, **{**kw, "generator": torch.Generator().manual_seed(t)})
        _assert_same_step(a, b)
        sample = a.prev_sample


# ----------------------------------------------------------------------------- step level (sampling)

SMALL_V = 6
SAMPLING_CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=3),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0.9, top_k=4, top_p=0.7, sampling_method="auto"),
]


def _sampling_setup(dtype=torch.float32):
    g = torch.Generator().manual_seed(11)
    logits = (torch.randn(2, 3, SMALL_V, generator=g) * 1.5).to(dtype)
    sample = torch.tensor([[MASK, MASK, 2], [4, MASK, MASK]])
    prompt = torch.tensor([False, False, False])
    return logits, sample, prompt


def _draws(scheduler, logits, sample, prompt, n, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        out = scheduler.step(logits, 0, sample, mask_token_id=MASK, threshold=0.45, editing_threshold=0.3,
                             prompt_mask=prompt, generator=gen, **kw)
        rows.append(torch.cat([out.prev_sample, out.transfer_index.long(), out.editing_transfer_index.long()], -1))
    return torch.cat(rows)  # one outcome per block row


@pytest.mark.parametrize("kw", SAMPLING_CASES, ids=[str(i) for i in range(len(SAMPLING_CASES))])
def test_step_sampling_same_distribution(kw):
    kw = {"sampling_method": "multinomial", **kw}
    theirs, ours = _schedulers(3, 2)
    logits, sample, prompt = _sampling_setup()
    a = _draws(theirs, logits, sample, prompt, 1500, 1, **kw)
    b = _draws(ours, logits, sample, prompt, 1500, 2, **kw)
    assert_same_distribution(b, a)
    # Power: the test tells a different temperature apart.
    c = _draws(ours, logits, sample, prompt, 1500, 3, **{**kw, "temperature": kw["temperature"] * 2.5})
    assert_different_distribution(b, c)


@pytest.mark.parametrize("kw", [dict(temperature=0.8, top_k=4, top_p=0.75), dict(temperature=0.8),
                                dict(temperature=1.7, top_k=SMALL_V, top_p=1.0)], ids=["filtered", "plain", "no-op"])
def test_step_sampling_probs_are_the_filtered_distribution(kw):
    # sampled_probs = probability of the sampled token under diffusers' tempered, filtered distribution.
    theirs, ours = _schedulers(3, 2)
    logits, sample, prompt = _sampling_setup()
    filtered = DiffusersScheduler._top_p_filtering(
        DiffusersScheduler._top_k_filtering(logits / kw["temperature"], kw.get("top_k")), kw.get("top_p"))
    probs = torch.softmax(filtered.float(), -1)
    for seed in range(20):
        out = ours.step(logits, 0, sample, mask_token_id=MASK, sampling_method="multinomial",
                        generator=torch.Generator().manual_seed(seed), **kw)
        assert out.sampled_tokens.dtype == torch.int64 and out.sampled_probs.dtype == torch.float32
        want = probs.gather(-1, out.sampled_tokens[..., None])[..., 0]
        assert (want > 0).all(), "sampled a filtered-out token"
        torch.testing.assert_close(out.sampled_probs, want, rtol=1e-5, atol=1e-7)


def test_step_sampling_bf16_same_distribution():
    theirs, ours = _schedulers(3, 2)
    logits, sample, prompt = _sampling_setup(torch.bfloat16)
    kw = dict(temperature=0.6, sampling_method="multinomial")
    assert_same_distribution(_draws(ours, logits, sample, prompt, 1500, 4, **kw),
                             _draws(theirs, logits, sample, prompt, 1500, 5, **kw))


def test_step_sampling_generator_reproducible_and_consumed_once():
    _, ours = _schedulers(3, 2)
    logits, sample, prompt = _sampling_setup()
    kw = dict(mask_token_id=MASK, temperature=1.0, sampling_method="multinomial")
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    outs = [ours.step(logits, 0, sample, generator=g1, **kw).sampled_tokens for _ in range(30)]
    again = [ours.step(logits, 0, sample, generator=g2, **kw).sampled_tokens for _ in range(30)]
    assert all(torch.equal(x, y) for x, y in zip(outs, again))
    assert len({tuple(x.flatten().tolist()) for x in outs}) > 1
    # One int64 drawn per sampling step.
    g3, g4 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    ours.step(logits, 0, sample, generator=g3, **kw)
    torch.randint(0, 2**62, (1,), generator=g4)
    assert torch.equal(g3.get_state(), g4.get_state())


def test_step_sampling_no_host_sync():
    _, ours = _schedulers(3, 2, editing_threshold=0.2)
    logits, sample, prompt = _sampling_setup()
    with forbid_host_sync():
        for kw in SAMPLING_CASES:
            ours.step(logits, torch.tensor(1), sample, mask_token_id=MASK, prompt_mask=prompt,
                      generator=torch.Generator().manual_seed(0), **{"sampling_method": "multinomial", **kw})
        ours.step(logits, 0, sample, mask_token_id=MASK, temperature=0.5)  # default generator
    # The guard is live: diffusers' own step reads the schedule inside our scope.
    theirs, _ = _schedulers(3, 2)
    with forbid_host_sync(), step_scope(), pytest.raises(HostSyncError):
        theirs.step(logits, 0, sample, mask_token_id=MASK)


# ----------------------------------------------------------------------------- errors


BAD_STEP_ARGS = [
    dict(temperature=-0.5),
    dict(temperature=-0.5, sampling_method="greedy"),
    dict(temperature=0.7, top_p=0.0),
    dict(temperature=0.7, top_p=-0.2),
    dict(temperature=0.7, top_p=float("nan")),
    dict(temperature=0.7, top_k=2.5),
]


@pytest.mark.parametrize("bad", BAD_STEP_ARGS, ids=[str(i) for i in range(len(BAD_STEP_ARGS))])
def test_step_errors_match_diffusers(bad):
    theirs, ours = _schedulers(3, 2)
    logits, sample, _ = _sampling_setup()
    kw = dict(mask_token_id=MASK, **{"sampling_method": "multinomial", **bad})
    with pytest.raises(Exception) as want:
        theirs.step(logits, 0, sample, **kw)
    with pytest.raises(type(want.value)):
        ours.step(logits, 0, sample, **kw)


def test_set_timesteps_errors_inherited():
    ours = BlockRefinementScheduler()
    with pytest.raises(ValueError):
        ours.set_timesteps(0)
    with pytest.raises(ValueError):
        ours.set_timesteps(4, block_length=0)


# ----------------------------------------------------------------------------- EOS and loop control


def test_check_eos_finished_matches_diffusers():
    g = torch.Generator().manual_seed(21)
    eos, p = 7, 5
    for trial in range(200):
        b, w, bl = 4, 16, 4
        cur = torch.randint(0, 10, (b, w), generator=g)
        cur[torch.rand(b, w, generator=g) < 0.15] = MASK
        if trial % 3 == 0:
            cur[:, :p][cur[:, :p] == eos] = 1  # EOS only in the generated part
        sampled = torch.randint(5, 9, (b, bl), generator=g)
        final = torch.rand(b, bl, generator=g) < 0.5
        finished = torch.rand(b, generator=g) < 0.2
        want = DiffusersScheduler.check_eos_finished(cur, sampled, final, finished.clone(), eos, MASK, p)
        mine = finished.clone()
        with forbid_host_sync():
            with step_scope():
                got = BlockRefinementScheduler.check_eos_finished(cur, sampled, final, mine, eos, MASK, p)
        assert got is mine, "finished is updated in place, as diffusers does"
        assert torch.equal(got, want), trial


def test_check_block_should_continue_matches_diffusers():
    theirs, ours = _schedulers(4, 3)
    for masks in (True, False, torch.tensor(True), torch.tensor(False)):
        for editing in (False, True):
            for edited in (torch.zeros(2, 4, dtype=torch.bool), torch.eye(2, 4, dtype=torch.bool)):
                for step_idx in (0, 2, 3, 5):
                    for post in (0, 2, 3, 4):
                        for fin in (torch.tensor([False, False]), torch.tensor([True, False]),
                                    torch.tensor([True, True])):
                            args = (step_idx, masks, editing, edited, post, 3, fin)
                            got = ours.check_block_should_continue(*args)
                            assert type(got) is bool
                            assert got == theirs.check_block_should_continue(*args), args
