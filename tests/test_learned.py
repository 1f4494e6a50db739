"""Learned policies: features, scorers, selection, exact set log-probabilities,
save/load, no host sync, and the trainers improving a toy task where order matters."""
import itertools
import math

import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.learned import (
    FEATURES,
    LearnedPolicy,
    MLPScorer,
    TransformerScorer,
    set_log_prob,
    step_features,
)
from dmkernels.policies import StepContext
from dmkernels.testing import forbid_host_sync
from dmkernels.train import _clean_states, _correctness_loss, grpo, rloo, rollout, supervised
from test_sampler import snapshot

# A toy denoiser where order matters. Tokens 0..9, [MASK] = 10. The answer at
# position j is j % 10. A position whose left neighbour is already decoded (or
# j = 0) proposes the answer with probability ~0.55; any other position proposes
# a wrong token with probability ~0.95. Confidence is therefore a trap: the most
# confident positions are the wrong ones, and the best order is left to right.
V, MASK, W = 11, 10, 8


class OrderToy(torch.nn.Module):
    def forward(self, x, attention_mask=None):
        B, L = x.shape
        j = torch.arange(L)
        left_done = torch.cat([torch.ones(B, 1, dtype=torch.bool), x[:, :-1] != MASK], 1)
        right = (j % 10).expand(B, L)
        wrong = ((j + 3) % 10).expand(B, L)
        token = torch.where(left_done, right, wrong)
        level = torch.where(left_done, 2.0, 5.0)  # softmax peak ~0.55 vs ~0.95 over 11 tokens
        logits = torch.zeros(B, L, V)
        logits.scatter_(-1, token[..., None], level[..., None])
        logits[..., MASK] = float("-inf")
        return logits


def toy_reward(sequences, index):
    return (sequences == torch.arange(sequences.shape[1]) % 10).float().mean(-1)


def toy_canvas(n):
    return torch.full((n, W), MASK)


def greedy_reward(policy, n=16):
    out = dmkernels.infill(OrderToy(), toy_canvas(n), steps=W, policy=policy, mask_id=MASK, seed=0)
    return float(toy_reward(out.sequences, None).mean())


def make_ctx(B=3, Wd=9, step=2, steps=5, quota=None):
    logits = torch.randn(B, Wd, 13) * 2
    eligible = torch.rand(B, Wd) < 0.6
    if B > 1:
        eligible[0] = False  # a row with nothing to choose
        eligible[1, 0] = True
    stats = dmkernels.token_stats(logits, positions=eligible)
    return StepContext(stats=stats, eligible=eligible, step=step, steps=steps, block=0,
                       quota=quota if quota is not None else torch.full((B,), 2),
                       logits=logits, x=torch.zeros(B, Wd, dtype=torch.int64), generator=torch.Generator(),
                       schedule=None)


def test_the_old_and_new_homes_are_the_same_objects():
    import dmkernels.learned as old
    import dmkernels.policies.learned as new

    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
    assert P.LearnedPolicy is LearnedPolicy and issubclass(LearnedPolicy, P.Policy)


def test_features_are_the_documented_ones_and_zero_off_the_masks():
    ctx = make_ctx()
    f = step_features(ctx)
    assert f.shape == (3, 9, len(FEATURES)) and f.dtype == torch.float32
    assert torch.isfinite(f).all()
    e = ctx.eligible
    col = {name: f[..., i] for i, name in enumerate(FEATURES)}
    torch.testing.assert_close(col["confidence"][e], ctx.stats.confidence[e])
    torch.testing.assert_close(col["margin"][e], ctx.stats.margin[e])
    torch.testing.assert_close(col["entropy"][e], ctx.stats.entropy[e])
    torch.testing.assert_close(col["log_prob"][e], ctx.stats.confidence[e].log())
    assert torch.equal(col["mask"], e.float())
    for name in ("confidence", "margin", "entropy", "log_prob"):
        assert (col[name][~e] == 0).all()
    torch.testing.assert_close(col["position"][0], torch.arange(9) / 8.0)
    assert (col["step_fraction"] == 2 / 5).all()


def test_scorer_sizes():
    mlp = MLPScorer()
    tr = TransformerScorer()
    n_mlp = sum(p.numel() for p in mlp.parameters())
    n_tr = sum(p.numel() for p in tr.parameters())
    assert 100 <= n_mlp < 1000
    assert 0.2e6 <= n_tr <= 0.4e6
    x = torch.randn(2, 9, len(FEATURES))
    assert mlp(x).shape == (2, 9) and tr(x).shape == (2, 9)
    with pytest.raises(ValueError, match="max_positions"):
        TransformerScorer(max_positions=4)(x)


@pytest.mark.parametrize("scorer", [MLPScorer, TransformerScorer])
def test_topk_selection_takes_the_quota_and_threshold_at_least_one(scorer):
    torch.manual_seed(0)
    ctx = make_ctx(quota=torch.tensor([3, 2, 1]))
    chosen = LearnedPolicy(scorer()).select(ctx)
    assert torch.equal(chosen.sum(-1), torch.minimum(ctx.quota, ctx.eligible.sum(-1)))
    assert not (chosen & ~ctx.eligible).any()
    chosen = LearnedPolicy(scorer(), selection="threshold").select(ctx)
    has = ctx.eligible.any(-1)
    assert (chosen.sum(-1)[has] >= 1).all() and not chosen[~has].any()
    assert not (chosen & ~ctx.eligible).any()
    with pytest.raises(ValueError, match="selection"):
        LearnedPolicy(scorer(), selection="sometimes")


def brute_force_topk(scores, chosen, eligible, T):
    out = []
    for b in range(scores.shape[0]):
        w = {i: math.exp(scores[b, i].item() / T) for i in range(scores.shape[1]) if eligible[b, i]}
        S = [i for i in range(scores.shape[1]) if chosen[b, i]]
        total = 0.0
        for perm in itertools.permutations(S):
            p, rest = 1.0, dict(w)
            for i in perm:
                p *= rest[i] / sum(rest.values())
                del rest[i]
            total += p
        out.append(math.log(total))
    return torch.tensor(out, dtype=torch.float64)


def brute_force_threshold(scores, chosen, eligible):
    out = []
    for b in range(scores.shape[0]):
        p = torch.sigmoid(scores[b].double())
        idx = [i for i in range(scores.shape[1]) if eligible[b, i]]
        best = max(idx, key=lambda i: scores[b, i].item())
        total = 0.0
        for bits in itertools.product([0, 1], repeat=len(idx)):
            drawn = {i for i, bit in zip(idx, bits) if bit} or {best}
            if drawn == {i for i in range(scores.shape[1]) if chosen[b, i]}:
                total += math.prod(p[i].item() if bit else 1 - p[i].item() for i, bit in zip(idx, bits))
        out.append(math.log(total))
    return torch.tensor(out, dtype=torch.float64)


def test_set_log_prob_is_exact():
    scores = torch.randn(4, 7) * 1.5
    eligible = torch.rand(4, 7) < 0.8
    eligible[:, :3] = True
    chosen = torch.zeros(4, 7, dtype=torch.bool)
    chosen[0, [0, 2]] = True
    chosen[1, [1]] = True
    chosen[2, [0, 1, 2]] = True
    chosen[3, :] = eligible[3]  # everything: certain
    torch.testing.assert_close(set_log_prob(scores, chosen, eligible, "topk", 0.7),
                               brute_force_topk(scores, chosen, eligible, 0.7))
    best = torch.where(eligible, scores, -1e9).argmax(-1)
    single_best = torch.zeros_like(chosen)
    single_best[torch.arange(4), best] = True
    for c in (chosen & eligible, single_best):
        torch.testing.assert_close(set_log_prob(scores, c, eligible, "threshold"),
                                   brute_force_threshold(scores, c, eligible))
    # Differentiable.
    s = scores.clone().requires_grad_()
    set_log_prob(s, chosen, eligible, "topk").sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_exploring_topk_draws_sets_with_their_probability():
    torch.manual_seed(1)
    B, Wd = 1, 5
    ctx = make_ctx(B=1, Wd=Wd, quota=torch.tensor([2]))
    ctx.eligible[:] = True
    ctx.stats = dmkernels.token_stats(ctx.logits, positions=ctx.eligible)
    policy = LearnedPolicy(MLPScorer(), explore=0.8)
    ctx.generator.manual_seed(0)
    counts = {}
    n = 1500
    for _ in range(n):
        key = tuple(policy.select(ctx)[0].nonzero().flatten().tolist())
        counts[key] = counts.get(key, 0) + 1
    scores = policy.scores(step_features(ctx), ctx.eligible)
    chi2, dof = 0.0, -1
    for S in itertools.combinations(range(Wd), 2):
        chosen = torch.zeros(1, Wd, dtype=torch.bool)
        chosen[0, list(S)] = True
        expected = n * set_log_prob(scores, chosen, ctx.eligible, "topk", 0.8).exp().item()
        chi2 += (counts.get(S, 0) - expected) ** 2 / expected
        dof += 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)  # far beyond chance would fail


@pytest.mark.parametrize("selection", ["topk", "threshold"])
@pytest.mark.parametrize("explore", [None, 1.0])
def test_runs_in_generate_without_host_sync(selection, explore):
    policy = LearnedPolicy(TransformerScorer(d_model=32, ff=64), selection=selection, explore=explore)
    model = OrderToy()
    with forbid_host_sync():
        out = dmkernels.generate(model, torch.zeros(2, 3, dtype=torch.int64), gen_length=8, block_length=4,
                                 steps=4, policy=policy, mask_id=MASK, seed=0)
    assert not (out.sequences == MASK).any()


def test_save_and_load_round_trip(tmp_path):
    for scorer, selection in ((MLPScorer(hidden=8), "topk"), (TransformerScorer(d_model=32, ff=64), "threshold")):
        policy = LearnedPolicy(scorer, selection=selection)
        path = str(tmp_path / f"{selection}.safetensors")
        policy.save(path)
        loaded = LearnedPolicy.load(path)
        assert loaded.selection == selection and type(loaded.scorer) is type(scorer)
        ctx = make_ctx()
        assert torch.equal(loaded.select(ctx), policy.select(ctx))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not written by LearnedPolicy"):
        LearnedPolicy.load(str(tmp_path / "other.safetensors"))


def test_the_toy_task_punishes_confidence():
    assert greedy_reward(P.LowConfidence()) <= 0.5
    # Left to right is perfect: a policy that scores by -position.
    class LeftToRight(P.Policy):
        def select(self, ctx):
            scores = -torch.arange(ctx.eligible.shape[1], dtype=torch.float32).expand_as(ctx.eligible)
            return dmkernels.select_topk(scores, ctx.quota, ctx.eligible)
    assert greedy_reward(LeftToRight()) == 1.0


def test_rollout_records_every_step():
    policy = LearnedPolicy(MLPScorer())
    before = snapshot(policy)
    seqs, traj = rollout(policy, OrderToy(), toy_canvas(3), seed=0, explore=1.0, infill=True, steps=4,
                         mask_id=MASK)
    assert len(traj) == 4 and seqs.shape == (3, W) and traj.explore == 1.0
    assert snapshot(policy) == before  # the policy itself is not changed
    assert all(c.sum(-1).eq(2).all() for c in traj.chosen)
    # The trajectory, not the policy, decides the rollout's exploration: same seed, same draws.
    again = rollout(LearnedPolicy(policy.scorer, explore=0.25), OrderToy(), toy_canvas(3), seed=0, explore=1.0,
                    infill=True, steps=4, mask_id=MASK)
    assert torch.equal(again[0], seqs)
    greedy = rollout(LearnedPolicy(policy.scorer, explore=1.0), OrderToy(), toy_canvas(3), seed=0, explore=None,
                     infill=True, steps=4, mask_id=MASK)[0]
    plain = dmkernels.infill(OrderToy(), toy_canvas(3), steps=4, policy=policy, mask_id=MASK, seed=0).sequences
    assert torch.equal(greedy, plain)
    with pytest.raises(TypeError, match="dmkernels.infill.*gen_length"):
        rollout(policy, OrderToy(), toy_canvas(3), seed=0, explore=1.0, infill=True, steps=4, gen_length=8)
    with pytest.raises(ValueError, match="Trajectory: explore"):
        rollout(policy, OrderToy(), toy_canvas(3), seed=0, explore=-1.0, infill=True, steps=4, mask_id=MASK)


@pytest.mark.parametrize("selection", ["topk", "threshold"])
def test_generating_and_training_leave_the_policy_as_it_was(selection):
    """Only the scorer's parameter values change, and only in the trainers."""
    policy = LearnedPolicy(MLPScorer(hidden=4), selection=selection, explore=0.5)
    before = snapshot(policy)
    dmkernels.infill(OrderToy(), toy_canvas(2), steps=4, policy=policy, mask_id=MASK, seed=0)
    rollout(policy, OrderToy(), toy_canvas(2), seed=0, explore=1.0, infill=True, steps=4, mask_id=MASK)
    assert snapshot(policy) == before
    structure = snapshot(policy, values=False)
    kw = dict(iterations=1, prompts_per_iteration=1, infill=True, steps=4, mask_id=MASK, explore=2.0)
    grpo(policy, OrderToy(), toy_canvas(2), toy_reward, group_size=2, **kw)
    rloo(policy, OrderToy(), toy_canvas(2), toy_reward, samples=2, **kw)
    if selection == "topk":
        supervised(policy, OrderToy(), toy_canvas(2), toy_answers(2), rounds=1, epochs=1, infill=True, steps=4,
                   mask_id=MASK)
    assert snapshot(policy, values=False) == structure
    assert policy.explore == 0.5


def confidence_like_mlp():
    """An MLP that starts out scoring by confidence (the heuristic the toy punishes)."""
    mlp = MLPScorer(hidden=8)
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(0.01)
        mlp.net[0].weight[0, FEATURES.index("confidence")] = 5.0
        mlp.net[2].weight[0, 0] = 1.0
    return mlp


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_training_raises_the_reward_on_the_toy_task(trainer):
    torch.manual_seed(0)
    policy = LearnedPolicy(confidence_like_mlp())
    before = greedy_reward(policy)
    assert before <= 0.5  # starts as the confidence heuristic
    kw = dict(iterations=40, prompts_per_iteration=2, lr=3e-2, seed=0, infill=True, steps=W, mask_id=MASK)
    if trainer == "grpo":
        history = grpo(policy, OrderToy(), toy_canvas(4), toy_reward, group_size=8, **kw)
    else:
        history = rloo(policy, OrderToy(), toy_canvas(4), toy_reward, samples=8, **kw)
    after = greedy_reward(policy)
    first = sum(h["reward"] for h in history[:5]) / 5
    last = sum(h["reward"] for h in history[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert after > before + 0.3 and after >= 0.9, (before, after)


def toy_answers(n):
    return (torch.arange(W) % 10).expand(n, W).clone()


def test_supervised_keeps_only_states_before_the_first_wrong_commit():
    # Greedy confidence commits a wrong (0.95-confident) position at the first step,
    # so each row contributes that first step only.
    policy = LearnedPolicy(confidence_like_mlp())
    features, hidden, right, eligible = _clean_states(
        policy, OrderToy(), toy_canvas(5), toy_answers(5), explore=None, seed=0, batch=2, infill=True,
        generate_kwargs=dict(steps=W, mask_id=MASK))
    assert features.shape[:2] == (5, W) and hidden is None
    assert eligible.all()  # the first step: everything masked
    assert right[:, 0].all() and not right[:, 1:].any()  # only position 0 proposes its answer


def test_supervised_learns_the_toy_task():
    torch.manual_seed(0)
    policy = LearnedPolicy(confidence_like_mlp())
    before = greedy_reward(policy)
    assert before <= 0.5
    history = supervised(policy, OrderToy(), toy_canvas(8), toy_answers(8), rounds=2, epochs=20, batch_size=16,
                         lr=3e-2, explore=1.0, seed=0, infill=True, steps=W, mask_id=MASK)
    assert [h["round"] for h in history] == [0] * 20 + [1] * 20
    assert history[-1]["states"] > history[0]["states"]  # the second round adds its own rollouts
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], (history[0], history[-1])
    after = greedy_reward(policy)
    assert after >= 0.9, (before, after)


def test_preferred_right_proposals_take_the_listwise_mass():
    right = torch.tensor([[True, True, False], [True, False, False]])
    eligible = torch.ones(2, 3, dtype=torch.bool)
    preferred = torch.tensor([[False, True, True], [False, True, False]])
    scores = torch.tensor([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    plain = _correctness_loss(scores, right, eligible)
    assert torch.equal(_correctness_loss(scores, right, eligible, torch.zeros_like(right)), plain)
    # Row 0 holds a preferred right proposal (position 1): the listwise term wants it
    # first, and the score that ranks position 0 first now costs more. Row 1's only
    # preferred proposal is wrong: the row keeps its plain target.
    assert _correctness_loss(scores, right, eligible, preferred) > plain + 1.5  # (4.04 - 0.02) / 2 rows
    swapped = torch.tensor([[0.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    assert _correctness_loss(swapped, right, eligible, preferred) < _correctness_loss(scores, right, eligible,
                                                                                      preferred) - 1.5


def test_supervised_with_preferred_checks_what_it_returns():
    policy = LearnedPolicy(confidence_like_mlp())
    seen = []

    def first_position(tokens, eligible):
        seen.append(tokens.shape)
        return torch.zeros_like(eligible).index_fill_(1, torch.tensor([3]), True)

    history = supervised(policy, OrderToy(), toy_canvas(4), toy_answers(4), rounds=1, epochs=2, batch_size=8,
                         lr=1e-2, explore=1.0, infill=True, steps=W, mask_id=MASK, preferred=first_position)
    assert len(history) == 2 and seen and all(s[1] == W for s in seen)
    with pytest.raises(TypeError, match=r"supervised: what preferred returned must be one of \(bool\), got float32"):
        supervised(policy, OrderToy(), toy_canvas(2), toy_answers(2), rounds=1, epochs=1, infill=True, steps=W,
                   mask_id=MASK, preferred=lambda t, e: e.float())
    with pytest.raises(ValueError, match=r"supervised: what preferred returned must have shape \[\d+, 8\]"):
        supervised(policy, OrderToy(), toy_canvas(2), toy_answers(2), rounds=1, epochs=1, infill=True, steps=W,
                   mask_id=MASK, preferred=lambda t, e: e[:, :-1])
    with pytest.raises(TypeError, match="supervised: preferred must be a callable"):
        supervised(policy, OrderToy(), toy_canvas(2), toy_answers(2), rounds=1, epochs=1, infill=True, steps=W,
                   mask_id=MASK, preferred=True)


def test_supervised_errors_name_the_argument():
    policy = LearnedPolicy(MLPScorer())
    with pytest.raises(ValueError, match="targets"):
        supervised(policy, OrderToy(), toy_canvas(3), toy_answers(2), infill=True, steps=W, mask_id=MASK)
    with pytest.raises(ValueError, match="targets have 5 columns"):
        supervised(policy, OrderToy(), toy_canvas(3), toy_answers(3)[:, :5], rounds=1, epochs=1, infill=True,
                   steps=W, mask_id=MASK)
    with pytest.raises(ValueError, match="topk"):
        supervised(LearnedPolicy(MLPScorer(), selection="threshold"), OrderToy(), toy_canvas(3), toy_answers(3))


def test_trainer_errors_name_the_argument():
    policy = LearnedPolicy(MLPScorer())
    with pytest.raises(TypeError, match="LearnedPolicy"):
        grpo(P.LowConfidence(), OrderToy(), toy_canvas(2), toy_reward)
    with pytest.raises(ValueError, match="prompts"):
        grpo(policy, OrderToy(), torch.zeros(3, dtype=torch.int64), toy_reward)
    with pytest.raises(ValueError, match="rollouts per prompt"):
        rloo(policy, OrderToy(), toy_canvas(2), toy_reward, samples=1)
    with pytest.raises(ValueError, match="one reward per sequence"):
        grpo(policy, OrderToy(), toy_canvas(2), lambda s, i: torch.zeros(1), iterations=1, infill=True, steps=W,
             mask_id=MASK)


class WithHidden(torch.nn.Module):
    """OrderToy with a Hugging Face style output carrying hidden states."""

    def __init__(self):
        super().__init__()
        self.toy = OrderToy()
        self.asked = []

    def forward(self, x, attention_mask=None, output_hidden_states=False):
        from types import SimpleNamespace
        self.asked.append(output_hidden_states)
        logits = self.toy(x)
        h = torch.nn.functional.one_hot(x, V).float()  # [B, L, 11]: what is on the canvas
        return SimpleNamespace(logits=logits, hidden_states=(h, h) if output_hidden_states else None)


@pytest.mark.parametrize("scorer", [MLPScorer, TransformerScorer])
def test_scorer_reads_the_models_hidden_state(scorer, tmp_path):
    kw = dict(hidden_size=V, hidden_features=4) if scorer is MLPScorer else dict(d_model=32, ff=64, hidden_size=V)
    policy = LearnedPolicy(scorer(**kw))
    assert policy.needs_hidden
    model = WithHidden()
    with forbid_host_sync():
        out = dmkernels.infill(model, toy_canvas(2), steps=4, policy=policy, mask_id=MASK, seed=0)
    assert model.asked and all(model.asked) and not (out.sequences == MASK).any()
    # The projection is trained: gradients reach it through the recorded hidden states.
    seqs, traj = rollout(policy, model, toy_canvas(2), seed=0, explore=1.0, infill=True, steps=4, mask_id=MASK)
    assert all(h is not None and h.shape == (2, W, V) for h in traj.hidden)
    from dmkernels.train import trajectory_log_probs
    trajectory_log_probs(policy, traj).sum().backward()
    assert policy.scorer.hidden_proj.weight.grad.abs().sum() > 0
    path = str(tmp_path / "h.safetensors")
    policy.save(path)
    assert LearnedPolicy.load(path).needs_hidden
    # A model without hidden states is a clear error; plain policies never ask for them.
    with pytest.raises(TypeError, match="hidden_states"):
        dmkernels.infill(OrderToy(), toy_canvas(2), steps=4, policy=policy, mask_id=MASK)
    plain = WithHidden()
    dmkernels.infill(plain, toy_canvas(2), steps=4, policy=LearnedPolicy(MLPScorer()), mask_id=MASK)
    assert not any(plain.asked)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_hidden_state_policy_on_the_shipped_model_with_caches(cache):
    from dmkernels.models import DiffusionLM, tiny_config
    torch.manual_seed(0)
    model = DiffusionLM(tiny_config(vocab_size=41)).eval()
    out = model(torch.randint(0, 40, (2, 5)), output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (2, 5, model.config.hidden_size)
    policy = LearnedPolicy(MLPScorer(hidden_size=model.config.hidden_size))
    with forbid_host_sync():
        gen = dmkernels.generate(model, torch.randint(0, 39, (2, 4)), gen_length=8, block_length=4, steps=4,
                                 policy=policy, cache=cache, seed=0)
    assert not (gen.sequences == 40).any()


def test_supervised_needs_masked_positions():
    done = torch.zeros(2, W, dtype=torch.int64)  # nothing to fill: no step to learn from
    with pytest.raises(RuntimeError, match="no step to learn from"):
        supervised(LearnedPolicy(MLPScorer()), OrderToy(), done, toy_answers(2), rounds=1, epochs=1, infill=True,
                   steps=W, mask_id=MASK)
