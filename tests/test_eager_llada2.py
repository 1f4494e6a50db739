"""Self-consistency of the eager LLaDA2.0 / LLaDA2.1 references
(dmkernels/bench/eager/llada2.py) on the tiny random LLaDA2 model: the calls they
make (window, mask, positions), the commit schedule, editing confined to the
current block, EOS truncation and early stop, block alignment, batches, sampling
filters, and the guards."""
from __future__ import annotations

import math

import pytest
import torch

from dmkernels.bench.eager import llada2 as eager
from dmkernels.models import LLaDA2ForBlockDiffusion, llada2_tiny_config
from parity_harness import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 512
MASK, EOS = V - 1, V - 2
IDS = dict(mask_id=MASK, eos_id=EOS)


def _model(dtype=torch.float32):
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LLaDA2ForBlockDiffusion(llada2_tiny_config(vocab_size=V)).eval().to(dtype)
    torch.random.set_rng_state(state)
    return model


MODEL = _model()


class Spy(torch.nn.Module):
    """Calls the tiny model; records every call; optionally boosts a token's logit at
    given absolute positions (``force = {position: token}``) or removes EOS
    everywhere (``no_eos``, so that counts are not cut short by a random EOS)."""

    def __init__(self, inner=MODEL, force=None, boost=40.0, no_eos=False):
        super().__init__()
        self.inner = inner
        self.force = force or {}
        self.boost = boost
        self.no_eos = no_eos
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls.append(dict(x=input_ids.clone(), mask=attention_mask, pos=position_ids))
        out = self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        for p, token in self.force.items():
            if p < input_ids.shape[1]:
                out.logits[:, p, token] += self.boost
        if self.no_eos:
            out.logits[..., EOS] = -math.inf
        self.calls[-1]["logits"] = out.logits[0].clone()
        return out


def prompt(n, seed=0):
    return torch.randint(0, V - 2, (1, n), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the calls


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
@pytest.mark.parametrize("P", [8, 6, 1])
def test_calls_windows_masks_positions(fn, P):
    bl, gen = 4, 9
    spy = Spy()
    x = prompt(P)
    out = fn(spy, x, block_length=bl, steps=4, gen_length=gen, threshold=0.5, **IDS)
    assert out.dtype == torch.int64 and out.shape[0] == 1 and 1 <= out.shape[1] <= gen
    assert not (out == MASK).any()
    T = math.ceil((P + gen) / bl) * bl
    first_end = (P // bl + 1) * bl  # generation starts with the block holding position P
    assert spy.calls[0]["x"].shape[1] == first_end
    block = torch.arange(T) // bl
    for c in spy.calls:
        end = c["x"].shape[1]
        assert end % bl == 0 and first_end <= end <= T
        assert torch.equal(c["x"][0, :P], x[0])  # the prompt never changes
        assert c["mask"].dtype == torch.float32 and c["mask"].shape == (1, 1, end, end)
        keep = (block[None, :end] <= block[:end, None])
        assert torch.equal(c["mask"][0, 0] == 0, keep) and (c["mask"][0, 0][~keep] == -math.inf).all()
        assert torch.equal(c["pos"], torch.arange(end)[None])
    ends = [c["x"].shape[1] for c in spy.calls]
    assert ends == sorted(ends)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_mask_in_model_dtype(dtype):
    spy = Spy(_model(dtype))
    eager.generate(spy, prompt(3), block_length=4, steps=2, gen_length=4, **IDS)
    assert all(c["mask"].dtype == dtype for c in spy.calls)


def test_greedy_deterministic_and_block_answer():
    a = eager.generate(MODEL, prompt(5), block_length=4, steps=4, gen_length=12, **IDS)
    b = eager.generate(MODEL, prompt(5), block_length=4, steps=4, gen_length=12, **IDS)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- LLaDA2.0 schedule


@pytest.mark.parametrize("P,bl,steps,gen", [(5, 4, 4, 12), (4, 4, 2, 8), (6, 4, 3, 10), (3, 4, 6, 8), (2, 8, 3, 8)])
def test_v20_commits_follow_the_schedule(P, bl, steps, gen):
    """threshold 1.0 (no confidence is above it): every step commits exactly
    min(schedule[step], masks left) masks of the current block, and a block stops
    once it has none."""
    spy = Spy(no_eos=True)
    out = eager.generate(spy, prompt(P), block_length=bl, steps=steps, gen_length=gen, threshold=1.0, **IDS)
    schedule = eager.transfer_schedule(bl, min(steps, gen))
    assert sum(schedule) == bl and len(schedule) == min(steps, gen)
    T = math.ceil((P + gen) / bl) * bl
    states = [c["x"][0] for c in spy.calls]
    final = torch.full((T,), MASK)
    final[:P] = prompt(P)[0]
    final[P:P + out.shape[1]] = out[0]
    assert out.shape[1] == gen
    by_block = {}
    for i, s in enumerate(states):
        by_block.setdefault(s.shape[0], []).append(i)
    for end, idx in by_block.items():
        step_masks = [int((states[i][end - bl:end] == MASK).sum()) for i in idx]
        nxt = idx[-1] + 1
        if nxt < len(states):
            step_masks.append(int((states[nxt][end - bl:end] == MASK).sum()))
        elif T == P + gen:  # the answer shows the last block's final state unless it has an overhang
            step_masks.append(int((final[end - bl:end] == MASK).sum()))
        for step, (before, later) in enumerate(zip(step_masks, step_masks[1:])):
            assert before - later == min(schedule[step], before), (end, step, step_masks)
        assert len(idx) <= len(schedule)


def test_v20_threshold_zero_commits_a_block_per_call():
    spy = Spy()
    eager.generate(spy, prompt(5), block_length=4, steps=4, gen_length=12, threshold=0.0, **IDS)
    ends = [c["x"].shape[1] for c in spy.calls]
    assert len(ends) == len(set(ends)) and not any((c["x"][0, -4:] == MASK).sum() == 0 for c in spy.calls)


def test_v20_steps_capped_by_gen_length_over_minimal_topk():
    spy = Spy()
    eager.generate(spy, prompt(8), block_length=8, steps=8, gen_length=8, minimal_topk=4, threshold=1.0, **IDS)
    assert len(spy.calls) == 2  # steps = min(8, 8 // 4) = 2: schedule [4, 4]
    assert [int((c["x"][0, 8:] == MASK).sum()) for c in spy.calls] == [8, 4]
    spy = Spy()
    out = eager.generate(spy, prompt(3), block_length=4, steps=4, gen_length=2, minimal_topk=3, **IDS)
    assert spy.calls == [] and out.tolist() == [[MASK, MASK]]  # 0 steps: nothing generated (public behaviour)


# ----------------------------------------------------------------------------- LLaDA2.1 editing


@pytest.mark.parametrize("P", [6, 8])
def test_v21_edits_only_the_current_blocks_committed_non_prompt_tokens(P):
    bl, gen = 4, 12
    spy = Spy()
    out = eager.generate_v21(spy, prompt(P, seed=2), block_length=bl, gen_length=gen, threshold=0.9,
                             editing_threshold=0.05, max_post_steps=3, **IDS)
    T = math.ceil((P + gen) / bl) * bl
    final = torch.full((T,), MASK)
    final[:P] = prompt(P, seed=2)[0]
    final[P:P + out.shape[1]] = out[0]
    states = [c["x"][0] for c in spy.calls]
    edits = 0
    for i, s in enumerate(states):
        end = s.shape[0]
        later = (states[i + 1] if i + 1 < len(states) else final)[:end]
        changed = s != later
        assert not changed[: max(P, end - bl)].any()  # nothing outside the current block, never the prompt
        edits += int((changed & (s != MASK)).sum())
    assert edits > 0  # the test has power: committed tokens were rewritten
    # max_post_steps: at most 3 calls per block start with a block without masks
    by_block = {}
    for s in states:
        by_block.setdefault(s.shape[0], []).append(int((s[-bl:] == MASK).sum()))
    assert all(sum(m == 0 for m in masks) <= 3 for masks in by_block.values())
    assert any(sum(m == 0 for m in masks) >= 1 for masks in by_block.values())


@pytest.mark.parametrize("et", [0.3, 0.6])
def test_v21_greedy_edits_are_exactly_the_confident_changes(et):
    """Greedy: between two calls of a block, a committed non-prompt token changes iff
    the model's argmax there differs from it with softmax probability > editing_threshold,
    and then it becomes that argmax."""
    P, bl, gen = 6, 4, 10
    spy = Spy(no_eos=True)
    out = eager.generate_v21(spy, prompt(P, seed=1), block_length=bl, gen_length=gen, threshold=0.9,
                             editing_threshold=et, max_post_steps=4, **IDS)
    edits = 0
    for c, nxt in zip(spy.calls, spy.calls[1:]):
        x, end = c["x"][0], c["x"].shape[1]
        if nxt["x"].shape[1] != end:
            continue  # block boundary: the last call's writes are checked through the next block's prompt
        probs = c["logits"][end - bl:end].softmax(-1)
        conf, token = probs.max(-1)
        before, after = x[end - bl:end], nxt["x"][0, end - bl:end]
        editable = (before != MASK) & (torch.arange(end - bl, end) >= P)
        expect = editable & (token != before) & (conf > et)
        assert torch.equal(editable & (after != before), expect)
        assert torch.equal(after[expect], token[expect])
        edits += int(expect.sum())
        masked = before == MASK  # mask filling: those above 0.9, else the most confident one
        high = masked & (conf > 0.9)
        fill = high if high.any() else masked & (torch.arange(bl) == torch.where(masked, conf, -1.0).argmax())
        assert torch.equal(masked & (after != MASK), fill) and torch.equal(after[fill], token[fill])
    assert edits > 0 and out.shape[1] == gen


@pytest.mark.parametrize("post", [0, 2])
def test_v21_without_editing_counts_calls(post):
    """editing_threshold 1.0 (never exceeded), threshold 1.0, num_to_transfer 1: one mask
    per call, then one post call that finds no edit (none when max_post_steps is 0)."""
    bl, P, gen = 4, 6, 10
    spy = Spy(no_eos=True)
    out = eager.generate_v21(spy, prompt(P), block_length=bl, gen_length=gen, threshold=1.0, editing_threshold=1.0,
                             max_post_steps=post, **IDS)
    blocks = list(range(P // bl, math.ceil((P + gen) / bl)))
    masks = [bl - (P % bl)] + [bl] * (len(blocks) - 1)
    assert out.shape[1] == gen
    assert len(spy.calls) == sum(masks) + (len(blocks) if post > 0 else 0)
    for c, nxt in zip(spy.calls, spy.calls[1:]):  # editing off: committed tokens never change
        x, end = c["x"][0], c["x"].shape[1]
        assert torch.equal(nxt["x"][0, :end][x != MASK], x[x != MASK])


def test_v21_num_to_transfer_commits_that_many():
    spy = Spy()
    eager.generate_v21(spy, prompt(8), block_length=8, gen_length=8, threshold=1.0, editing_threshold=1.0,
                       num_to_transfer=3, max_post_steps=0, **IDS)
    assert [int((c["x"][0, 8:] == MASK).sum()) for c in spy.calls] == [8, 5, 2]


# ----------------------------------------------------------------------------- EOS


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
@pytest.mark.parametrize("eos_at", [6, 13])
def test_eos_truncates_and_early_stop_keeps_the_answer(fn, eos_at):
    P, bl, gen = 5, 4, 16
    kw = dict(block_length=bl, steps=4, gen_length=gen, threshold=0.5, **IDS)
    plain, early = Spy(force={P + eos_at: EOS}), Spy(force={P + eos_at: EOS})
    a = fn(plain, prompt(P), eos_early_stop=False, **kw)
    b = fn(early, prompt(P), eos_early_stop=True, **kw)
    assert torch.equal(a, b)
    assert a.shape[1] == eos_at + 1 and a[0, -1] == EOS and not (a[0, :-1] == EOS).any()
    last_end = max(c["x"].shape[1] for c in early.calls)
    assert last_end == (P + eos_at) // bl * bl + bl  # stopped after the block holding the EOS
    if fn is eager.generate_v21:  # 2.1 runs every block unless eos_early_stop
        assert max(c["x"].shape[1] for c in plain.calls) == math.ceil((P + gen) / bl) * bl
    assert len(early.calls) <= len(plain.calls)


def test_v20_early_return_inside_a_block():
    """An EOS committed early in a block with no mask before it ends generation at
    once (fewer calls), with the same answer."""
    P, bl, gen = 4, 8, 8
    kw = dict(block_length=bl, steps=8, gen_length=gen, threshold=1.0, **IDS)
    plain, early = Spy(force={P: EOS}), Spy(force={P: EOS})
    a = eager.generate(plain, prompt(P), **kw)
    b = eager.generate(early, prompt(P), eos_early_stop=True, **kw)
    assert a.tolist() == b.tolist() == [[EOS]]
    assert len(early.calls) == 1 < len(plain.calls)


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
def test_eos_in_prompt_and_in_overhang(fn):
    # An EOS inside the prompt is not the answer's end (public 2.0's early return would return nothing).
    x = prompt(5)
    x[0, 2] = EOS
    out = fn(Spy(force={5 + 3: EOS}), x, block_length=4, steps=4, gen_length=8, eos_early_stop=True, **IDS)
    assert out.shape[1] == 4 and out[0, -1] == EOS
    # An EOS only in the last block's overhang [P + gen, T) is cut off: gen_length tokens come back.
    P, gen, bl = 5, 6, 4  # T = 12: position 11 is overhang
    for stop in (False, True):
        out = fn(Spy(force={11: EOS}), prompt(P), block_length=bl, steps=4, gen_length=gen, threshold=1.0,
                 eos_early_stop=stop, **IDS)
        assert out.shape[1] == gen and not (out == EOS).any()


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
def test_batch_rows_equal_rows_alone(fn):
    kw = dict(block_length=4, steps=4, gen_length=8, threshold=0.6, **IDS)
    a, b = prompt(6, seed=3), prompt(3, seed=4)
    batch = torch.full((2, 6), EOS)
    batch[0] = a[0]
    batch[1, 3:] = b[0]
    am = torch.ones(2, 6, dtype=torch.long)
    am[1, :3] = 0
    force = {6 + 2: EOS}  # row 0 stops early (absolute position 8 of its own canvas)
    out = fn(Spy(force=force), batch, attention_mask=am, **kw)
    ra = fn(Spy(force=force), a, **kw)
    rb = fn(Spy(force=force), b, **kw)
    assert out.shape == (2, max(ra.shape[1], rb.shape[1]))
    assert torch.equal(out[0, : ra.shape[1]], ra[0]) and torch.equal(out[1, : rb.shape[1]], rb[0])
    assert (out[0, ra.shape[1]:] == EOS).all() and (out[1, rb.shape[1]:] == EOS).all()
    assert ra.shape[1] == 3


# ----------------------------------------------------------------------------- sampling


def test_sample_tokens_filters_and_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.4, -1.0, 1.0]]).repeat(40000, 1)
    torch.manual_seed(0)
    tok, conf = eager.sample_tokens(logits, 0.7, 3, None, argmax_of_logits=False)
    kept = logits[0] / 0.7
    kept[[2, 3, 4]] = -math.inf  # top-3 keeps 0 and the tie 1, 5
    expected = torch.softmax(kept, 0)
    freq = torch.bincount(tok, minlength=6).double() / tok.numel()
    assert torch.allclose(freq, expected.double(), atol=0.01)
    torch.testing.assert_close(conf, expected[tok])
    # top-p: the token that takes the mass past p stays, the rest go
    tok, conf = eager.sample_tokens(logits, 1.0, None, 0.5, argmax_of_logits=False)
    assert set(tok.tolist()) == {0, 1}  # p(0) ~ 0.42 < 0.5, so the next one (1, the lower index of the tie) stays
    probs = torch.softmax(logits[0], 0)
    assert torch.allclose(conf, (probs / probs[[0, 1]].sum())[tok])
    # greedy: argmax and its softmax probability, no random draw
    state = torch.random.get_rng_state()
    tok, conf = eager.sample_tokens(logits[:2], 0.0, 3, 0.5, argmax_of_logits=True)
    assert tok.tolist() == [0, 0] and torch.allclose(conf, probs[0].expand(2))
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
def test_sampling_runs_and_draws_once_per_call(fn, monkeypatch):
    draws = []
    real = torch.multinomial

    def counting(probs, num_samples, *a, **k):
        draws.append(tuple(probs.shape))
        return real(probs, num_samples, *a, **k)

    monkeypatch.setattr(torch, "multinomial", counting)
    spy = Spy()
    torch.manual_seed(5)
    a = fn(spy, prompt(5), temperature=0.8, top_k=20, top_p=0.9, block_length=4, steps=4, gen_length=8, **IDS)
    assert draws == [(4, V)] * len(spy.calls) and not (a == MASK).any()
    torch.manual_seed(5)
    b = fn(Spy(), prompt(5), temperature=0.8, top_k=20, top_p=0.9, block_length=4, steps=4, gen_length=8, **IDS)
    assert torch.equal(a, b)
    outs = set()
    for seed in range(4):
        torch.manual_seed(seed)
        outs.add(tuple(fn(MODEL, prompt(5), temperature=1.0, block_length=4, steps=4, gen_length=8, **IDS)[0].tolist()))
    assert len(outs) > 1


# ----------------------------------------------------------------------------- guards


def test_v21_hang_guard_and_v20_terminates():
    class MaskLover(Spy):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits[..., MASK] = 100.0  # an untrained model that predicts [MASK]
            return out

    with pytest.raises(RuntimeError, match="mask_id"):
        eager.generate_v21(MaskLover(), prompt(4), block_length=4, gen_length=4, max_post_steps=1, **IDS)
    spy = MaskLover()
    out = eager.generate(spy, prompt(4), block_length=4, steps=3, gen_length=4, **IDS)
    assert out.tolist() == [[MASK] * 4] and len(spy.calls) == 3  # public: the block keeps its masks


@pytest.mark.parametrize("fn", [eager.generate, eager.generate_v21])
@pytest.mark.parametrize("kw, words", [(dict(temperature=-1.0), "temperature"), (dict(block_length=0), "block_length"),
                                       (dict(minimal_topk=0), "minimal_topk"), (dict(gen_length=0), "gen_length")])
def test_bad_arguments(fn, kw, words):
    spy = Spy()
    with pytest.raises(ValueError, match=words):
        fn(spy, prompt(3), **{**dict(block_length=4, gen_length=4), **kw}, **IDS)
    assert spy.calls == []


def test_v21_num_to_transfer_must_be_positive():
    with pytest.raises(ValueError, match="num_to_transfer"):
        eager.generate_v21(MODEL, prompt(3), block_length=4, gen_length=4, num_to_transfer=0, **IDS)
