"""The Pairs task (dmkernels.tasks.pairs), its shipped denoiser and learned few-step
orders, the equal-budget heuristics and the orders benchmark (dmkernels.bench.orders)."""
import json
import types

import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.bench import orders
from dmkernels.bench.quality import Counted
from dmkernels.learned import MLPScorer
from dmkernels.tasks import pairs
from dmkernels.testing import forbid_host_sync

N, G = pairs.NUM_PAIRS, pairs.GEN_LENGTH
U = pairs.UNKNOWN


@pytest.fixture(scope="module")
def denoiser():
    return pairs.load_denoiser()


def gen(net, prompts, policy, steps, **kw):
    return dmkernels.generate(net, prompts, gen_length=G, block_length=G, steps=steps, policy=policy,
                              temperature=pairs.TEMPERATURE, seed=0, **kw)


# -------------------------------------------------------------------- the task

def test_generate_is_seeded_and_right_by_construction():
    a, b = pairs.generate(50, 3), pairs.generate(50, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (50, N) and a[1].shape == (50, G) and a[0].dtype == torch.int64
    assert not torch.equal(pairs.generate(50, 4)[0], a[0])
    assert bool(pairs.correct(a[1], a[0]).all())
    # A prefix of a stream is the stream's start, and the test and development sets differ.
    assert torch.equal(pairs.generate(10, 3)[0], a[0][:10])
    assert not torch.equal(pairs.heldout_set(100)[0], pairs.dev_set(100)[0])
    hidden = pairs.generate(20, 1, reveal=0.0)[0]
    shown, answers = pairs.generate(20, 1, reveal=1.0)
    assert bool((hidden == U).all())
    assert torch.equal(shown, answers[:, :N])
    # About half the hints are shown at the default rate.
    share = float((pairs.heldout_set(1000)[0] != U).float().mean())
    assert 0.45 < share < 0.55


def test_scoring_on_hand_made_cases():
    prompt = torch.tensor([[3, U, U, U, U, U, U, 0]])
    right = torch.tensor([[3, 1, 2, 7, 7, 0, 5, 0, 11, 9, 10, 15, 15, 8, 13, 8]])
    assert pairs.correct(right, prompt).tolist() == [True]
    assert pairs.pair_accuracy(right, prompt).tolist() == [1.0]
    # Any agreeing symbol is right where the hint is unknown ...
    other = right.clone()
    other[0, 1], other[0, 1 + N] = 6, 6 + 8
    assert pairs.correct(other, prompt).tolist() == [True]
    # ... a pair that disagrees is not ...
    bad = right.clone()
    bad[0, 2 + N] = 9
    assert pairs.correct(bad, prompt).tolist() == [False]
    assert pairs.pair_accuracy(bad, prompt).tolist() == [7 / 8]
    # ... nor an agreeing pair that drops its hint, nor the alphabets swapped.
    hint = right.clone()
    hint[0, 0], hint[0, N] = 4, 12
    swapped = right.clone()
    swapped[0, 3], swapped[0, 3 + N] = 15, 15
    both = torch.cat([hint, swapped])
    assert pairs.correct(both, prompt.repeat(2, 1)).tolist() == [False, False]
    # The whole sequence (prompt first) is accepted too.
    assert pairs.correct(torch.cat([prompt, right], 1), prompt).tolist() == [True]
    with pytest.raises(ValueError, match="tasks.pairs.correct: generated"):
        pairs.correct(right[:, :5], prompt)
    with pytest.raises(ValueError, match="tasks.pairs.pair_accuracy: prompts"):
        pairs.pair_accuracy(right, prompt[:, :3])


def test_partners():
    p = pairs.partners()
    assert torch.equal(p[p], torch.arange(G)) and not bool((p == torch.arange(G)).any())


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="tasks.pairs.generate: reveal"):
        pairs.generate(3, 0, reveal=1.5)
    with pytest.raises(ValueError, match="tasks.pairs.load_policy: calls"):
        pairs.load_policy(5)
    with pytest.raises(FileNotFoundError, match="tasks.pairs.load_denoiser"):
        pairs.load_denoiser(path=tmp_path / "none.safetensors")
    # A checkpoint whose configuration does not fit the task is refused before any model is built.
    src = pairs.checkpoint_dir() / "pairs_denoiser"
    weights = tmp_path / "d.safetensors"
    weights.write_bytes(src.with_suffix(".safetensors").read_bytes())
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["config"]["vocab_size"] = 10
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tasks.pairs.load_denoiser.*vocab_size"):
        pairs.load_denoiser(path=weights)
    meta["config"]["vocab_size"] = pairs.VOCAB_SIZE
    meta["config"]["hidden_size"] = 32
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tasks.pairs.load_denoiser.*shape"):
        pairs.load_denoiser(path=weights)


# ------------------------------------------------ the shipped denoiser and orders

def test_the_denoiser_fills_right_one_position_per_call(denoiser):
    """At one position per call the order hardly matters: the denoiser itself is right."""
    prompts, _ = pairs.dev_set(64)
    with forbid_host_sync():
        out = gen(pairs.AnswerProposals(denoiser), prompts, P.LowConfidence(), G)
    assert float(pairs.correct(out.sequences, prompts).float().mean()) >= 0.98


@pytest.mark.parametrize("calls", pairs.POLICY_CALLS)
def test_the_shipped_orders_load_run_and_beat_confidence(denoiser, calls):
    """The learned order reads only the built-in features, runs in the sampler
    without host sync, and at its budget beats LowConfidence on 200 development
    examples (the set it was selected on; the held-out numbers are the benchmark's)."""
    policy = pairs.load_policy(calls)
    assert isinstance(policy.scorer, MLPScorer) and policy.features == () and policy.selection == "topk"
    prompts, _ = pairs.dev_set(200)
    net = pairs.AnswerProposals(denoiser)
    with forbid_host_sync():
        out = gen(net, prompts, policy, calls)
    assert out.model_calls == calls
    learned = pairs.correct(out.sequences, prompts).float().mean()
    base = pairs.correct(gen(net, prompts, P.LowConfidence(), calls).sequences, prompts).float().mean()
    assert float(learned) >= float(base) + 0.15


# ------------------------------------------------------- equal-budget heuristics

def _recording(policy):
    """Counted plus the chosen masks of every step."""
    counted = Counted(policy)
    counted.chosen = []
    inner = counted.select

    def select(ctx):
        c = inner(ctx)
        counted.chosen.append(c.clone())
        return c

    counted.select = select
    return counted


@pytest.mark.parametrize("steps", [4, 8, 5])
def test_budgeted_rules_take_exactly_the_budget(denoiser, steps):
    prompts, _ = pairs.dev_set(48)
    net = pairs.AnswerProposals(denoiser)
    for policy in (orders.BudgetedEntropyBounded(0.1), orders.BudgetedEntropyBounded(0.0, "margin"),
                   orders.DilatedOrder(), orders.HalfFirst()):
        rec = _recording(policy)
        with forbid_host_sync():
            out = gen(net, prompts, rec, steps)
        assert out.model_calls == steps
        assert bool((rec.active_steps == steps).all()), policy     # every row commits at every call
        assert not bool((out.sequences == pairs.MASK_TOKEN).any())
        assert torch.equal(torch.stack(rec.chosen).sum(0), torch.ones(48, G, dtype=torch.int64))


def test_budgeted_entropy_bounded_is_eb_within_the_clamp(denoiser):
    """Where EB's own count fits the budget's bounds the budgeted rule commits EB's set."""
    prompts, _ = pairs.dev_set(64)
    net = pairs.AnswerProposals(denoiser)
    eb, budgeted = P.EntropyBounded(0.1), orders.BudgetedEntropyBounded(0.1)
    seen = 0

    class Both(P.Policy):
        def select(self, ctx):
            nonlocal seen
            mine = budgeted.select(ctx)
            theirs = eb.select(ctx)
            masked = ctx.eligible.sum(-1)
            left = ctx.steps - ctx.step
            inside = (theirs.sum(-1) >= -(-masked // left)) & (theirs.sum(-1) <= masked - (left - 1))
            assert torch.equal(mine[inside], theirs[inside])
            seen += int(inside.sum())
            return mine

    gen(net, prompts, Both(), 8)
    assert seen > 64


def test_dilated_rules_follow_the_groups(denoiser):
    """DUS itself takes exactly 4 calls on a block of 16 (base 2: groups of 2, 2, 4, 8);
    the budgeted order commits coarse groups before fine ones, the schedule's count per call."""
    prompts, _ = pairs.dev_set(32)
    net = pairs.AnswerProposals(denoiser)
    groups = dmkernels.dilated_groups(G, 2)
    a = _recording(P.Dilated())
    out = gen(net, prompts, a, 4)
    assert out.model_calls == 4 and bool((a.active_steps == 4).all())
    assert [sorted(set(groups[c[0]].tolist())) for c in a.chosen] == [[0], [1], [2], [3]]
    for steps in (4, 8):
        b = _recording(orders.DilatedOrder())
        gen(net, prompts, b, steps)
        per_step = [groups[c[0]] for c in b.chosen]
        assert all(len(g) == G // steps for g in per_step)
        assert all(int(x.max()) <= int(y.min()) for x, y in zip(per_step, per_step[1:]))


def test_half_first_never_commits_partners_together(denoiser):
    prompts, _ = pairs.dev_set(64)
    rec = _recording(orders.HalfFirst())
    out = gen(pairs.AnswerProposals(denoiser), prompts, rec, 4)
    for c in rec.chosen:
        assert not bool((c & c[:, pairs.partners()]).any())
    assert float(pairs.correct(out.sequences, prompts).float().mean()) >= 0.95


def test_the_same_tokens_on_every_backend(denoiser, kernel_backend):
    """The budgeted EB rule (entropy_bounded then topk) and the learned order (topk)
    pass the step's backend to their ops: every backend samples the same tokens.
    (DilatedOrder and HalfFirst use topk the same way; the interpreter is slow.)"""
    backend = kernel_backend
    prompts, _ = pairs.dev_set(2)
    model = pairs.load_denoiser(device=backend.device)
    for make in (lambda device: orders.BudgetedEntropyBounded(0.1), lambda device: pairs.load_policy(4, device=device)):
        ref = gen(pairs.AnswerProposals(denoiser), prompts, make("cpu"), 4, backend="reference").sequences
        out = gen(pairs.AnswerProposals(model), prompts.to(backend.device), make(backend.device), 4,
                  backend=backend.name)
        assert torch.equal(out.sequences.cpu(), ref)


# ---------------------------------------------------------------- the benchmark

def test_the_orders_benchmark_quick(tmp_path, capsys):
    args = types.SimpleNamespace(quick=True, puzzles=24, out_dir=str(tmp_path), json=None)
    assert orders.main(args) == 0
    records = json.loads((tmp_path / "orders_quality.json").read_text())
    names = {r["policy"] for r in records}
    assert {"LowConfidence", "Margin", "Dilated order, budgeted", orders.HAND_RULE} <= names
    assert {s for r in records for s in [r["steps"]]} == set(orders.BUDGETS)
    for r in records:
        assert r["n_examples"] == 24 and len(r["right"]) == 24
        assert r["model_calls"] == r["steps"]
        assert r["right_rate"] == pytest.approx(sum(r["right"]) / 24)
        if r["policy"].startswith("Learned"):
            lo, hi = r["gain_ci95"]
            assert lo <= r["gain_over_best_heuristic"] <= hi
            best = max((h for h in records if h["steps"] == r["steps"] and h["policy"].startswith(orders.RIVALS)),
                       key=lambda h: h["right_rate"])
            assert r["gain_over_best_heuristic"] == pytest.approx(r["right_rate"] - best["right_rate"])
    assert "gain over LowConfidence" in capsys.readouterr().out
