"""Feature providers of LearnedPolicy: the registry, the columns a policy adds and
their order, errors naming the provider (registration, construction, a bad
return value at the first step, a saved policy naming an unknown provider),
save/load by name, no host sync, and the trainers reading the extra columns."""
import json

import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.learned import (
    FEATURES,
    NUM_FEATURES,
    LearnedPolicy,
    MLPScorer,
    TransformerScorer,
    feature_provider,
    feature_providers,
    register_feature,
    step_features,
)
from dmkernels.policies import learned as L
from dmkernels.tasks import sudoku  # noqa: F401  (registers "sudoku.constraints")
from dmkernels.testing import forbid_host_sync
from dmkernels.train import grpo, rollout, supervised, trajectory_log_probs
from test_learned import MASK, W, OrderToy, confidence_like_mlp, greedy_reward, make_ctx, toy_answers, toy_canvas, \
    toy_reward


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry: what a test registers disappears after it."""
    monkeypatch.setattr(L, "_PROVIDERS", dict(L._PROVIDERS))
    return L._PROVIDERS


def left_done(ctx):
    """OrderToy's secret: a position proposes its answer once its left neighbour is decoded."""
    decoded = ctx.x != MASK
    left = torch.cat([torch.ones_like(decoded[:, :1]), decoded[:, :-1]], dim=1)
    return torch.where(ctx.eligible, left, False).float()[..., None]


def two_columns(ctx):
    B, Wd = ctx.eligible.shape
    pos = torch.arange(Wd, device=ctx.eligible.device, dtype=torch.float32).expand(B, Wd)
    return torch.stack([pos, -pos], dim=-1)


def test_register_and_look_up(registry):
    fn = register_feature("test.two", ["up", "down"])(two_columns)
    assert fn is two_columns  # the decorator hands the function back
    provider = feature_provider("test.two")
    assert provider.fn is two_columns and provider.columns == ("up", "down") and provider.width == 2
    assert "test.two" in feature_providers() and "sudoku.constraints" in feature_providers()
    register_feature("test.two", ["up", "down"])(two_columns)  # the same again (a module imported twice): fine
    with pytest.raises(ValueError, match="'test.two' is already registered.*replace=True"):
        register_feature("test.two", ["up", "down"])(left_done)
    register_feature("test.two", 1, replace=True)(left_done)
    assert feature_provider("test.two").columns == ("test.two[0]",)
    with pytest.raises(ValueError, match="unknown feature provider 'test.none'"):
        feature_provider("test.none")
    assert P.register_feature is register_feature and dmkernels.learned.register_feature is register_feature


@pytest.mark.parametrize("name, columns, kind, match", [
    ("has space", 1, ValueError, "name must be"),
    ("", 1, ValueError, "name must be"),
    (3, 1, TypeError, "name must be"),
    ("ok", 0, ValueError, "columns must name 1 to"),
    ("ok", ["a", ""], ValueError, "columns must name"),
    ("ok", "abc", TypeError, "columns must be a list"),
    ("ok", True, TypeError, "columns must be a list"),
])
def test_registration_errors_name_the_argument(registry, name, columns, kind, match):
    with pytest.raises(kind, match=f"register_feature.*{match}"):
        register_feature(name, columns)(two_columns)
    with pytest.raises(TypeError, match="'fine': the provider must be callable"):
        register_feature("fine", 1)(42)


def test_the_columns_follow_the_base_features_in_order(registry):
    register_feature("test.two", ["up", "down"])(two_columns)
    register_feature("test.left", ["left_done"])(left_done)
    policy = LearnedPolicy(MLPScorer(num_features=NUM_FEATURES + 3), features=["test.left", "test.two"])
    assert policy.num_features == NUM_FEATURES + 3
    assert policy.feature_names == FEATURES + ("test.left:left_done", "test.two:up", "test.two:down")
    ctx = make_ctx()
    f = policy.step_features(ctx)
    assert f.shape == (3, 9, NUM_FEATURES + 3)
    assert torch.equal(f[..., :NUM_FEATURES], step_features(ctx))
    assert torch.equal(f[..., NUM_FEATURES], left_done(ctx)[..., 0])
    assert torch.equal(f[..., NUM_FEATURES + 1:], two_columns(ctx))
    chosen = policy.select(ctx)
    assert torch.equal(chosen.sum(-1), torch.minimum(ctx.quota, ctx.eligible.sum(-1)))
    assert "test.left" in repr(policy)


def test_construction_errors_come_before_any_model_call(registry):
    calls = []

    def model(x, **kw):  # pragma: no cover - must not be reached
        calls.append(1)
        return OrderToy()(x)

    register_feature("test.two", ["up", "down"])(two_columns)
    with pytest.raises(ValueError, match="unknown feature provider 'test.nope'.*register_feature"):
        LearnedPolicy(MLPScorer(), features=["test.nope"])
    with pytest.raises(ValueError, match=r"num_features = 7.*7 \(FEATURES\) \+ 2 \(test.two\) = 9.*num_features=9"):
        LearnedPolicy(MLPScorer(), features=["test.two"])
    with pytest.raises(ValueError, match="names a provider twice"):
        LearnedPolicy(MLPScorer(num_features=11), features=["test.two", "test.two"])
    with pytest.raises(TypeError, match="features must be a list"):
        LearnedPolicy(MLPScorer(), features=42)
    registry.pop("sudoku.constraints")  # as if dmkernels.tasks.sudoku had not been imported
    with pytest.raises(ValueError, match="import dmkernels.tasks.sudoku first"):
        LearnedPolicy(MLPScorer(num_features=12), features="sudoku.constraints")
    assert not calls


@pytest.mark.parametrize("bad, kind, match", [
    (lambda ctx: [[0.0]], TypeError, "returned list, expected a tensor float32"),
    (lambda ctx: torch.zeros(*ctx.eligible.shape, 1, dtype=torch.float64), TypeError, "returned dtype torch.float64"),
    (lambda ctx: torch.zeros(*ctx.eligible.shape, 1, dtype=torch.bool), TypeError, "returned dtype torch.bool"),
    (lambda ctx: torch.zeros(*ctx.eligible.shape), ValueError, r"returned shape \[3, 9\], expected float32 "
                                                                 r"\[B, W, 1\] = \[3, 9, 1\]"),
    (lambda ctx: torch.zeros(*ctx.eligible.shape, 2), ValueError, r"returned shape \[3, 9, 2\]"),
    (lambda ctx: torch.zeros(1, 9, 1), ValueError, r"returned shape \[1, 9, 1\]"),
    (lambda ctx: torch.zeros(*ctx.eligible.shape, 1, device="meta"), ValueError, "returned a tensor on meta"),
])
def test_a_bad_return_value_names_the_provider(registry, bad, kind, match):
    register_feature("test.bad", 1)(bad)
    policy = LearnedPolicy(MLPScorer(num_features=NUM_FEATURES + 1), features=["test.bad"])
    with pytest.raises(kind, match=f"LearnedPolicy: feature provider 'test.bad' {match}"):
        policy.select(make_ctx())


def test_save_and_load_by_name(registry, tmp_path):
    register_feature("test.two", ["up", "down"])(two_columns)
    for scorer in (MLPScorer(num_features=9, hidden=4), TransformerScorer(num_features=9, d_model=16, ff=32)):
        policy = LearnedPolicy(scorer, features=["test.two"])
        path = str(tmp_path / "p.safetensors")
        policy.save(path)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["dmkernels"])
        assert meta["features"] == ["test.two"]  # the name, never the code
        loaded = LearnedPolicy.load(path)
        assert loaded.features == ("test.two",)
        ctx = make_ctx()
        assert torch.equal(loaded.select(ctx), policy.select(ctx))
        assert torch.equal(loaded.scores(loaded.step_features(ctx), ctx.eligible),
                           policy.scores(policy.step_features(ctx), ctx.eligible))
    # Replaced by a provider of another width: the saved scorer no longer fits.
    register_feature("test.two", 1, replace=True)(left_done)
    with pytest.raises(ValueError, match="scorer.num_features must be in"):
        LearnedPolicy.load(path)
    # Unknown: the error names it, before any scorer is built.
    registry.pop("test.two")
    built = []
    monkey = dict(L.SCORERS)
    L.SCORERS["transformer"] = lambda **kw: built.append(kw)
    try:
        with pytest.raises(ValueError, match=r"load: .*unknown feature provider 'test.two'"):
            LearnedPolicy.load(path)
    finally:
        L.SCORERS.update(monkey)
    assert not built


def rewrite_meta(path, out, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved = json.loads(meta["dmkernels"])
    change(saved)
    meta["dmkernels"] = json.dumps(saved)
    save_file(tensors, out, metadata=meta)
    return out


@pytest.mark.parametrize("features, match", [
    ("test.two", "features must be a list of provider names"),
    ([1], "features must be a list of provider names"),
    (["test.two", "test.two"], "names a provider twice"),
])
def test_a_crafted_features_entry_is_refused(registry, tmp_path, features, match):
    register_feature("test.two", ["up", "down"])(two_columns)
    path = str(tmp_path / "p.safetensors")
    LearnedPolicy(MLPScorer(num_features=9), features=["test.two"]).save(path)
    bad = rewrite_meta(path, str(tmp_path / "bad.safetensors"), lambda m: m.update(features=features))
    with pytest.raises(ValueError, match=f"LearnedPolicy.load: .*{match}"):
        LearnedPolicy.load(bad)


def test_a_policy_saved_before_providers_still_loads(tmp_path):
    path = str(tmp_path / "old.safetensors")
    LearnedPolicy(MLPScorer(hidden=4)).save(path)
    old = rewrite_meta(path, str(tmp_path / "old2.safetensors"), lambda m: m.pop("features"))
    assert LearnedPolicy.load(old).features == ()


@pytest.mark.parametrize("selection, explore", [("topk", None), ("threshold", None), ("topk", 1.0)])
def test_providers_run_without_host_sync(registry, selection, explore):
    register_feature("test.left", 1)(left_done)
    register_feature("test.two", 2)(two_columns)
    policy = LearnedPolicy(TransformerScorer(num_features=10, d_model=16, ff=32), features=["test.left", "test.two"],
                           selection=selection, explore=explore)
    with forbid_host_sync():
        out = dmkernels.generate(OrderToy(), torch.zeros(2, 3, dtype=torch.int64), gen_length=8, block_length=4,
                                 steps=4, policy=policy, mask_id=MASK, seed=0)
    assert not (out.sequences == MASK).any()


def test_trajectories_record_the_provided_columns(registry):
    register_feature("test.left", 1)(left_done)
    policy = LearnedPolicy(MLPScorer(num_features=8, hidden=4), features=["test.left"])
    _, traj = rollout(policy, OrderToy(), toy_canvas(3), seed=0, explore=1.0, infill=True, steps=4, mask_id=MASK)
    assert all(f.shape == (3, W, 8) for f in traj.features)
    assert torch.equal(traj.features[0][..., -1], torch.tensor([1.0] + [0.0] * (W - 1)).expand(3, W))
    lp = trajectory_log_probs(policy, traj)
    torch.testing.assert_close(lp, torch.stack(traj.log_prob))


def left_aware_mlp():
    """Starts as the confidence heuristic (the trap), with a feature that reveals the answer."""
    mlp = confidence_like_mlp()
    new = MLPScorer(num_features=NUM_FEATURES + 1, hidden=8)
    with torch.no_grad():
        for p in new.parameters():
            p.zero_()
        new.net[0].weight[:, :NUM_FEATURES] = mlp.net[0].weight
        new.net[0].bias.copy_(mlp.net[0].bias)
        new.net[2].weight.copy_(mlp.net[2].weight)
        new.net[2].bias.copy_(mlp.net[2].bias)
    return new


@pytest.mark.parametrize("trainer", ["supervised", "grpo"])
def test_the_trainers_learn_from_a_provided_feature(registry, trainer):
    """OrderToy defeats confidence; one provided column tells where the answer is.
    A few updates find it (the confidence-only MLP of test_learned needs far more)."""
    register_feature("test.left", 1)(left_done)
    torch.manual_seed(0)
    policy = LearnedPolicy(left_aware_mlp(), features=["test.left"])
    before = greedy_reward(policy)
    assert before <= 0.5
    if trainer == "supervised":
        supervised(policy, OrderToy(), toy_canvas(8), toy_answers(8), rounds=1, epochs=20, batch_size=16, lr=3e-2,
                   explore=1.0, seed=0, infill=True, steps=W, mask_id=MASK)
    else:
        grpo(policy, OrderToy(), toy_canvas(4), toy_reward, iterations=6, prompts_per_iteration=2, group_size=8,
             lr=3e-2, seed=0, infill=True, steps=W, mask_id=MASK)
    assert greedy_reward(policy) >= 0.9, before
