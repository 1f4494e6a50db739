"""BlockScorer: the generic learned policy that copies the denoiser's last
transformer block and reads the hidden state entering it (issue 16 item 3)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dmkernels
from dmkernels.learned import NUM_FEATURES, BlockScorer, LearnedPolicy, MLPScorer
from dmkernels.models import DiffusionLM, tiny_config
from dmkernels.policies import Policy
from dmkernels.testing import forbid_host_sync
from dmkernels.train import grpo, rollout, trajectory_log_probs

V = 41
MASK = V - 1


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return DiffusionLM(tiny_config(vocab_size=V, **overrides)).eval()


@pytest.mark.parametrize("overrides", [{}, dict(num_hidden_layers=1), dict(num_hidden_layers=3, hidden_size=48,
                                                                           num_attention_heads=4,
                                                                           position_embedding="rope+learned",
                                                                           rms_norm_eps=1e-6, rope_theta=1e4)])
def test_a_scorer_from_the_model_reproduces_its_last_block_exactly(overrides):
    model = tiny(**overrides)
    x = torch.randint(0, V, (3, 11))
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        scorer = BlockScorer.from_model(model)
        # hidden_states[-2] enters the last block; hidden_states[-1] is its output after the final norm.
        assert torch.equal(scorer.body(out.hidden_states[-2]), out.hidden_states[-1])
        # At the start the features add nothing to the block's input and the head reads nothing:
        # the scores are the skip connection's linear function of the step features.
        features = torch.randn(3, 11, NUM_FEATURES)
        assert torch.equal(scorer.body(out.hidden_states[-2], features), out.hidden_states[-1])
        assert torch.allclose(scorer(features, out.hidden_states[-2]), scorer.skip(features).squeeze(-1))
    # A copy: training the scorer leaves the model as it was.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in scorer.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # A different model's block is not what the scorer holds.
    other = tiny(seed=1, **overrides)
    with torch.no_grad():
        out2 = other(x, output_hidden_states=True)
        assert not torch.equal(BlockScorer.from_model(model).body(out2.hidden_states[-2]), out2.hidden_states[-1])


def test_the_policy_asks_for_the_input_of_the_last_block():
    model = tiny()
    policy = LearnedPolicy(BlockScorer.from_model(model))
    assert policy.needs_hidden and policy.hidden_layer == -2
    assert LearnedPolicy(MLPScorer(hidden_size=32)).hidden_layer == -1  # the earlier scorers: the last layer

    seen = []

    class Spy(Policy):  # records what the sampler hands the block policy
        needs_hidden = True
        hidden_layer = -2
        needs_generator = True

        def select(self, ctx):
            seen.append((ctx.x.clone(), ctx.hidden))
            return policy.select(ctx)

    canvas = torch.randint(0, MASK, (2, 12))
    canvas[:, 3::2] = MASK
    dmkernels.infill(model, canvas, steps=4, policy=Spy(), mask_id=MASK, seed=0)
    assert len(seen) == 4
    with torch.no_grad():
        for x, hidden in seen:
            assert torch.equal(hidden, model(x, output_hidden_states=True).hidden_states[-2])


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_the_block_policy_runs_inside_generate_without_host_sync(cache):
    model = tiny()
    _generate_and_infill_without_host_sync(model, LearnedPolicy(BlockScorer.from_model(model)), cache)


def _generate_and_infill_without_host_sync(model, policy, cache):
    prompt = torch.randint(0, MASK - 1, (2, 4))
    with forbid_host_sync():
        out = dmkernels.generate(model, prompt, gen_length=8, block_length=4, steps=4, policy=policy, cache=cache,
                                 seed=0)
        canvas = out.sequences.clone()
        canvas[:, 5::2] = MASK
        filled = dmkernels.infill(model, canvas, steps=3, policy=policy, mask_id=MASK, seed=0)
    assert not (out.sequences == MASK).any() and not (filled.sequences == MASK).any()


def test_save_and_load_round_trip(tmp_path):
    model = tiny(num_hidden_layers=3, rms_norm_eps=1e-6, rope_theta=1e4)
    scorer = BlockScorer.from_model(model)
    with torch.no_grad():  # trained-looking weights everywhere, so that every tensor must survive the trip
        for p in scorer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loaded = _save_load_and_compare(model, scorer, tmp_path)
    assert loaded.hidden_layer == -2 and loaded.needs_hidden
    assert loaded.scorer.config["rms_norm_eps"] == 1e-6 and loaded.scorer.config["rope_theta"] == 1e4


def _save_load_and_compare(model, scorer, tmp_path):
    """Save and load the policy of ``scorer``: the same configuration, every tensor
    and the same generation; returns the loaded policy."""
    policy = LearnedPolicy(scorer)
    path = str(tmp_path / "policy.safetensors")
    policy.save(path)
    loaded = LearnedPolicy.load(path)
    assert loaded.scorer.config == scorer.config
    state, back = scorer.state_dict(), loaded.scorer.state_dict()
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    prompt = torch.randint(0, MASK - 1, (2, 4))
    a = dmkernels.generate(model, prompt, gen_length=8, block_length=8, steps=4, policy=policy, seed=0)
    b = dmkernels.generate(model, prompt, gen_length=8, block_length=8, steps=4, policy=loaded, seed=0)
    assert torch.equal(a.sequences, b.sequences)
    return loaded


def _rewrite(path, tmp_path, **changes):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["dmkernels"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["scorer"].update(changes)
    out = str(tmp_path / "bad.safetensors")
    save_file(tensors, out, metadata={"dmkernels": json.dumps(meta)})
    return out


@pytest.mark.parametrize("changes, words", [
    (dict(rms_norm_eps=-1.0), r"scorer.rms_norm_eps must be a finite number"),
    (dict(rope_theta="1e4"), r"scorer.rope_theta must be a number"),
    (dict(hidden_size=None), r"scorer.hidden_size must be an int"),
    (dict(heads=3), r"scorer.hidden_size \(32\) must be a multiple of scorer.heads \(3\)"),
    (dict(intermediate_size=65), r"tensor block.mlp.gate_proj.weight has shape \[64, 32\], the configuration "
                                 r"implies \[65, 32\]"),
    (dict(surprise=1), r"unknown keys \['surprise'\]"),
])
def test_a_bad_saved_configuration_is_a_clear_error(tmp_path, changes, words):
    path = str(tmp_path / "block.safetensors")
    LearnedPolicy(BlockScorer.from_model(tiny())).save(path)
    with pytest.raises(ValueError, match=r"learned.LearnedPolicy.load: .*" + words):
        LearnedPolicy.load(_rewrite(path, tmp_path, **changes))


class LogitsOnly(torch.nn.Module):
    """A model whose output has no hidden states."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x, **kwargs):
        return SimpleNamespace(logits=self.model(x).logits)


class OneHidden(LogitsOnly):
    """Hidden states, but only one entry: there is no input of a last block to read."""

    def forward(self, x, output_hidden_states=False, **kwargs):
        out = self.model(x, output_hidden_states=True)
        return SimpleNamespace(logits=out.logits, hidden_states=out.hidden_states[-1:])


def test_errors_name_the_policy_and_the_argument():
    model = tiny()
    policy = LearnedPolicy(BlockScorer.from_model(model))
    prompt = torch.randint(0, MASK - 1, (2, 4))
    run = dict(gen_length=8, block_length=4, steps=4, policy=policy, seed=0)
    with pytest.raises(TypeError, match=r"dmkernels.generate: the policy reads the model's hidden states, but the "
                                        r"model's output has no .hidden_states"):
        dmkernels.generate(LogitsOnly(model), prompt, **run)
    with pytest.raises(ValueError, match=r"dmkernels.infill: the policy reads hidden_states\[-2\] "
                                         r"\(policy.hidden_layer\), but the model returned 1 hidden states"):
        dmkernels.infill(OneHidden(model), torch.full((2, 6), MASK), steps=3, policy=policy, mask_id=MASK)
    # The block does not match the model the policy runs on (another width).
    wider = tiny(hidden_size=48, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"BlockScorer: the hidden states have width 48, but the scorer's block "
                                         r"was built for hidden_size = 32"):
        dmkernels.generate(wider, prompt, **run)
    # Only a DiffusionLM's block can be copied.
    with pytest.raises(TypeError, match=r"learned.BlockScorer.from_model: model must be a "
                                        r"dmkernels.models.DiffusionLM .* got LogitsOnly"):
        BlockScorer.from_model(LogitsOnly(model))
    broken = tiny()
    broken.layers[-1].mlp.up_proj = torch.nn.Linear(32, 16, bias=False)  # no longer the config's block
    with pytest.raises(ValueError, match=r"learned.BlockScorer.from_model: the model's last block does not match "
                                         r".*mlp.up_proj.weight"):
        BlockScorer.from_model(broken)
    with pytest.raises(ValueError, match=r"BlockScorer: needs the hidden state entering the model's last block"):
        policy.scorer(torch.zeros(1, 4, NUM_FEATURES))

    class Odd(Policy):
        needs_hidden = True
        hidden_layer = "-2"

        def select(self, ctx):
            return ctx.eligible

    with pytest.raises(TypeError, match=r"dmkernels.generate: policy.hidden_layer must be an int"):
        dmkernels.generate(model, prompt, gen_length=8, block_length=4, steps=4, policy=Odd())


def test_grpo_trains_the_copied_block():
    model = tiny()
    policy = LearnedPolicy(BlockScorer.from_model(model))
    canvas = torch.randint(0, MASK, (2, 10))
    canvas[:, ::2] = MASK
    _, traj = rollout(policy, model, canvas, seed=0, explore=1.0, infill=True, steps=5, mask_id=MASK)
    assert all(h.shape == (2, 10, 32) for h in traj.hidden)
    with torch.no_grad():  # the recorded features are the step's built-in ones (no task features)
        assert traj.features[0].shape == (2, 10, NUM_FEATURES)
    policy.scorer.head.weight.data.normal_()  # past the zero start, so gradients reach the block
    trajectory_log_probs(policy, traj).sum().backward()
    assert policy.scorer.block.attn.q_proj.weight.grad.abs().sum() > 0
    assert policy.scorer.feature_in.weight.grad.abs().sum() > 0
    before = policy.scorer.block.mlp.up_proj.weight.detach().clone()
    answer = canvas.clone()
    answer[canvas == MASK] = 3

    def reward(seqs, index):
        return (seqs == answer[index]).float().mean(-1)

    history = grpo(policy, model, canvas, reward, iterations=2, prompts_per_iteration=2, group_size=2, lr=1e-2,
                   seed=0, infill=True, steps=5, mask_id=MASK)
    assert len(history) == 2
    assert not torch.equal(policy.scorer.block.mlp.up_proj.weight, before)


def test_a_scorer_of_the_wrong_feature_width_is_refused_up_front():
    # The generic policy reads the built-in features only; another width fails before any model call.
    with pytest.raises(ValueError, match=r"learned.LearnedPolicy: the scorer reads num_features = 9"):
        LearnedPolicy(BlockScorer(num_features=9, hidden_size=32, heads=2, intermediate_size=64))


def test_the_quality_benchmark_compares_learned_policies_with_the_task_feature_policy():
    from dmkernels.bench import quality
    rec = lambda name, solved: dict(policy=name, solved=solved, steps=20, denoiser="long",  # noqa: E731
                                    solve_rate=sum(solved) / len(solved))
    records = [rec("Margin", [1, 0, 0, 1, 0, 0]), rec(quality.TASK_FEATURE_POLICY, [1, 1, 1, 1, 0, 0]),
               rec("Learned[block_grpo]", [1, 1, 0, 1, 0, 0]), dict(rec(quality.TASK_FEATURE_POLICY, [0] * 6),
                                                                     set="dev")]
    quality.compare_to_heuristics(records)
    block, task = records[2], records[1]
    assert block["gain_over_task_features"] == pytest.approx(-1 / 6)
    assert block["gain_over_task_features_ci95"][0] <= -1 / 6 <= block["gain_over_task_features_ci95"][1]
    assert block["gain_over_best_heuristic"] == pytest.approx(1 / 6)
    assert "gain_over_task_features" not in task  # not against itself
    # Only the named entries run.
    ran = []
    quality.run(n_puzzles=2, budgets=("long",), quick=True, only=["Margin"], log=ran.append)
    assert ran and all("Margin" in line for line in ran)


# The proposal embedding: the block's input also carries each position's step token -------------

def _embed_scorer(model, **kw):
    return BlockScorer.from_model(model, proposal_embedding=True, **kw)


@pytest.mark.parametrize("overrides", [{}, dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                                position_embedding="rope+learned")])
def test_the_proposal_embedding_starts_at_zero_and_the_copy_reproduces_the_last_block(overrides):
    model = tiny(**overrides)
    x = torch.randint(0, V, (3, 11))
    tokens = torch.randint(0, V, (3, 11))
    features = torch.randn(3, 11, NUM_FEATURES)
    scorer = _embed_scorer(model)
    assert scorer.reads_tokens and scorer.config["vocab_size"] == V and scorer.config["proposal_embedding"]
    # A frozen copy of the model's own input embedding table; only the projection learns.
    assert torch.equal(scorer.token_embed.weight, model.embed_tokens.weight)
    assert not scorer.token_embed.weight.requires_grad and scorer.token_in.weight.requires_grad
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        assert torch.equal(scorer.body(out.hidden_states[-2], features, tokens), out.hidden_states[-1])
        assert torch.allclose(scorer(features, out.hidden_states[-2], tokens), scorer.skip(features).squeeze(-1))
        # Past the zero start, the tokens change the block's input: the scores depend on them.
        scorer.token_in.weight.normal_()
        other = (tokens + 1) % V
        assert not torch.equal(scorer.body(out.hidden_states[-2], features, tokens),
                               scorer.body(out.hidden_states[-2], features, other))
    # The model is not touched by training the scorer's projection.
    assert torch.equal(model.embed_tokens.weight, BlockScorer.from_model(model, proposal_embedding=True)
                       .token_embed.weight)


def test_the_policy_passes_the_step_tokens_proposals_where_masked_canvas_elsewhere():
    model = tiny()
    scorer = _embed_scorer(model)
    policy = LearnedPolicy(scorer)
    assert policy.needs_tokens and policy.needs_hidden and policy.hidden_layer == -2
    assert not LearnedPolicy(BlockScorer.from_model(model)).needs_tokens
    seen = []
    forward = scorer.forward

    def spy(features, hidden=None, tokens=None):
        seen.append(tokens.clone())
        return forward(features, hidden, tokens)

    scorer.forward = spy
    canvas = torch.randint(0, MASK, (2, 12))
    canvas[:, 3::2] = MASK
    _, traj = rollout(policy, model, canvas, seed=0, explore=1.0, infill=True, steps=4, mask_id=MASK)
    assert len(seen) == 4 and len(traj) == 4
    with torch.no_grad():
        first = model(canvas).logits.argmax(-1)
    # Step 0: the model's proposals at the masked cells, the given tokens elsewhere.
    assert torch.equal(seen[0], torch.where(canvas == MASK, first, canvas))
    for t in range(4):  # what the trainers rescore is what the policy read
        assert torch.equal(traj.tokens[t], seen[t])
    # A position committed at a step holds, at every later step, the token the step proposed there.
    for t in range(3):
        committed = traj.chosen[t]
        assert committed.any()
        assert torch.equal(seen[t + 1][committed], seen[t][committed])
        assert not traj.eligible[t + 1][committed].any()


def test_the_proposal_embedding_trains_through_the_trainers():
    from dmkernels.train import supervised
    model = tiny()
    policy = LearnedPolicy(_embed_scorer(model))
    canvas = torch.randint(0, MASK, (4, 10))
    canvas[:, ::2] = MASK
    _, traj = rollout(policy, model, canvas, seed=0, explore=1.0, infill=True, steps=5, mask_id=MASK)
    policy.scorer.head.weight.data.normal_()  # past the zero start, so gradients reach token_in
    trajectory_log_probs(policy, traj).sum().backward()
    assert policy.scorer.token_in.weight.grad.abs().sum() > 0
    assert policy.scorer.token_embed.weight.grad is None  # frozen
    before = policy.scorer.token_in.weight.detach().clone()
    embed = policy.scorer.token_embed.weight.detach().clone()
    answer = torch.where(canvas == MASK, torch.full_like(canvas, 3), canvas)
    supervised(policy, model, canvas, answer, rounds=1, epochs=2, batch_size=4, lr=1e-2, infill=True, steps=5,
               mask_id=MASK)
    assert not torch.equal(policy.scorer.token_in.weight, before)
    assert torch.equal(policy.scorer.token_embed.weight, embed)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_the_proposal_embedding_policy_runs_without_host_sync(cache):
    model = tiny()
    scorer = _embed_scorer(model)
    with torch.no_grad():
        scorer.token_in.weight.normal_()  # a trained-looking projection: the tokens matter
        scorer.head.weight.normal_()
    _generate_and_infill_without_host_sync(model, LearnedPolicy(scorer), cache)


def test_the_proposal_embedding_save_and_load_round_trip(tmp_path):
    model = tiny()
    scorer = _embed_scorer(model)
    with torch.no_grad():
        for p in scorer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loaded = _save_load_and_compare(model, scorer, tmp_path)
    assert loaded.needs_tokens
    assert not loaded.scorer.token_embed.weight.requires_grad  # still frozen after loading


def test_an_old_configuration_without_the_flag_loads_unchanged(tmp_path):
    import json

    from safetensors import safe_open
    model = tiny()
    scorer = BlockScorer.from_model(model)
    assert "proposal_embedding" not in scorer.config  # configurations written before it stay as they were
    path = str(tmp_path / "old.safetensors")
    LearnedPolicy(scorer).save(path)
    with safe_open(path, "pt") as f:
        assert set(json.loads(f.metadata()["dmkernels"])["scorer"]) == {
            "kind", "num_features", "hidden_size", "heads", "intermediate_size", "rms_norm_eps", "rope_theta"}
        assert not any(k.startswith("token_") for k in f.keys())
    loaded = LearnedPolicy.load(path)
    assert not loaded.needs_tokens and not hasattr(loaded.scorer, "token_embed")
    prompt = torch.randint(0, MASK - 1, (2, 4))
    a = dmkernels.generate(model, prompt, gen_length=8, block_length=4, steps=4, policy=LearnedPolicy(scorer), seed=0)
    b = dmkernels.generate(model, prompt, gen_length=8, block_length=4, steps=4, policy=loaded, seed=0)
    assert torch.equal(a.sequences, b.sequences)
    # An explicit false flag is the same scorer.
    assert not LearnedPolicy.load(_rewrite(path, tmp_path, proposal_embedding=False)).needs_tokens


def test_the_shipped_block_policy_loads_without_the_flag():
    from pathlib import Path

    import dmkernels.tasks as tasks
    path = Path(tasks.__file__).parent / "checkpoints" / "policy_block_grpo.safetensors"
    policy = LearnedPolicy.load(str(path))
    assert not policy.needs_tokens and "proposal_embedding" not in policy.scorer.config


@pytest.mark.parametrize("changes, words", [
    (dict(proposal_embedding=1), r"scorer.proposal_embedding must be true or false"),
    (dict(vocab_size=None), r"scorer.vocab_size must be an int, got None"),
    (dict(vocab_size=0), r"scorer.vocab_size must be in \[1, "),
    (dict(vocab_size=V + 1), r"tensor token_embed.weight has shape \[41, 32\], the configuration implies \[42, 32\]"),
    (dict(proposal_embedding=False), r"unexpected|token_embed"),
])
def test_a_bad_proposal_embedding_configuration_is_a_clear_error(tmp_path, changes, words):
    path = str(tmp_path / "embed.safetensors")
    LearnedPolicy(_embed_scorer(tiny())).save(path)
    with pytest.raises(ValueError, match=r"learned.LearnedPolicy.load: .*" + words):
        LearnedPolicy.load(_rewrite(path, tmp_path, **changes))


def test_wrong_step_tokens_are_a_clear_error():
    model = tiny()
    scorer = _embed_scorer(model)
    hidden = torch.randn(2, 6, 32)
    features = torch.zeros(2, 6, NUM_FEATURES)
    with pytest.raises(ValueError, match=r"learned.BlockScorer: built with proposal_embedding=True: needs the step "
                                         r"tokens"):
        scorer(features, hidden)
    with pytest.raises(TypeError, match=r"learned.BlockScorer: tokens must be an integer tensor \[B, W\], got "
                                        r"torch.float32"):
        scorer(features, hidden, torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"learned.BlockScorer: tokens have shape \[2, 5\], expected \[2, 6\]"):
        scorer(features, hidden, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"learned.BlockScorer: tokens were given, but the scorer was built "
                                         r"without proposal_embedding"):
        BlockScorer.from_model(model)(features, hidden, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"learned.BlockScorer: proposal_embedding=True needs vocab_size"):
        BlockScorer(hidden_size=32, heads=2, intermediate_size=64, proposal_embedding=True)
    with pytest.raises(TypeError, match=r"learned.BlockScorer: proposal_embedding must be a bool"):
        BlockScorer(hidden_size=32, heads=2, intermediate_size=64, proposal_embedding="yes", vocab_size=V)
    with pytest.raises(TypeError, match=r"learned.BlockScorer.from_model: model must be a "
                                        r"dmkernels.models.DiffusionLM"):
        BlockScorer.from_model(LogitsOnly(model), proposal_embedding=True)
    # A model proposing from a larger vocabulary than the scorer's table: refused before it indexes the table.
    big = tiny(seed=0)
    small = LearnedPolicy(BlockScorer(num_features=NUM_FEATURES, hidden_size=32, heads=2, intermediate_size=64,
                                      proposal_embedding=True, vocab_size=V - 5))
    small.scorer.block = BlockScorer.from_model(big).block
    with pytest.raises(ValueError, match=r"learned.LearnedPolicy: the model proposes from 41 tokens, but the "
                                         r"scorer's embedding table holds 36"):
        dmkernels.infill(big, torch.full((2, 6), MASK), steps=3, policy=small, mask_id=MASK)


def test_the_proposal_embedding_policy_picks_the_same_tokens_on_every_backend(backend):
    model = tiny().to(backend.device)
    scorer = _embed_scorer(model)
    with torch.no_grad():  # the tokens matter to the scores
        scorer.token_in.weight.normal_()
        scorer.head.weight.normal_()
    policy = LearnedPolicy(scorer)
    prompt = torch.randint(0, MASK - 1, (2, 4), generator=torch.Generator().manual_seed(1)).to(backend.device)
    run = dict(gen_length=8, block_length=4, steps=4, policy=policy, temperature=0.7, seed=5)
    want = dmkernels.generate(model, prompt, backend="reference", **run).sequences
    got = dmkernels.generate(model, prompt, backend=backend.name, **run).sequences
    assert torch.equal(got.cpu(), want.cpu())


# Several copied blocks (blocks=n): the scorer reads hidden_states[-1 - n] --------------------------------------

@pytest.mark.parametrize("blocks, proposal_embedding", [(2, False), (3, True)])
def test_a_scorer_of_several_blocks_reproduces_the_models_last_blocks_exactly(blocks, proposal_embedding):
    model = tiny(num_hidden_layers=3, position_embedding="rope+learned")
    x = torch.randint(0, V, (3, 13))
    scorer = BlockScorer.from_model(model, blocks=blocks, proposal_embedding=proposal_embedding)
    assert scorer.hidden_layer == -1 - blocks and len(scorer.lower_blocks) == blocks - 1
    assert scorer.config["blocks"] == blocks
    assert "blocks" not in BlockScorer.from_model(model).config  # one block: the configuration as before
    features = torch.randn(3, 13, NUM_FEATURES)
    tokens = torch.randint(0, V, (3, 13)) if proposal_embedding else None
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        assert torch.equal(scorer.body(out.hidden_states[-1 - blocks], features, tokens), out.hidden_states[-1])
        # The input of the last block alone is not what a two-block scorer reads.
        assert not torch.equal(scorer.body(out.hidden_states[-2], features, tokens), out.hidden_states[-1])
        # Each copied block is its own: changing a lower block's copy changes the scores' body.
        scorer.lower_blocks[0].attn.q_proj.weight.add_(1.0)
        assert not torch.equal(scorer.body(out.hidden_states[-1 - blocks], features, tokens), out.hidden_states[-1])
        assert not torch.equal(model.layers[3 - blocks].attn.q_proj.weight, scorer.lower_blocks[0].attn.q_proj.weight)


def test_a_policy_of_several_blocks_asks_for_their_input_and_round_trips(tmp_path):
    model = tiny(num_hidden_layers=3)
    scorer = BlockScorer.from_model(model, blocks=2, proposal_embedding=True)
    seen = []

    class Spy(LearnedPolicy):
        def select(self, ctx):
            seen.append((ctx.x.clone(), ctx.hidden))
            return super().select(ctx)

    policy = Spy(scorer)
    assert policy.hidden_layer == -3
    canvas = torch.randint(0, MASK, (2, 12))
    canvas[:, 3::2] = MASK
    dmkernels.infill(model, canvas, steps=3, policy=policy, mask_id=MASK, seed=0)
    with torch.no_grad():
        for x, hidden in seen:
            assert torch.equal(hidden, model(x, output_hidden_states=True).hidden_states[-3])
    with torch.no_grad():
        for p in scorer.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    loaded = _save_load_and_compare(model, scorer, tmp_path)
    assert loaded.hidden_layer == -3 and loaded.scorer.config["blocks"] == 2
    _generate_and_infill_without_host_sync(model, loaded, "prefix")


@pytest.mark.parametrize("blocks", [0, 4, 2.0, True])
def test_a_bad_number_of_blocks_is_a_clear_error(blocks):
    model = tiny(num_hidden_layers=3)
    with pytest.raises((ValueError, TypeError), match=r"learned.BlockScorer.from_model: blocks must be an int in "
                                                      r"\[1, 3\] \(the model has 3 blocks\)"):
        BlockScorer.from_model(model, blocks=blocks)
    with pytest.raises((ValueError, TypeError), match=r"learned.BlockScorer: blocks must be an int in \[1, 256\]"):
        BlockScorer(blocks=0)


@pytest.mark.parametrize("changes, words", [
    (dict(blocks=0), r"scorer.blocks must be in \[1, 256\], got 0"),
    (dict(blocks=3), r"tensor lower_blocks.1.attn_norm.weight is missing|lower_blocks.1"),
    (dict(blocks=1), r"unexpected tensor|lower_blocks.0"),
])
def test_a_bad_saved_number_of_blocks_is_a_clear_error(tmp_path, changes, words):
    path = str(tmp_path / "block2.safetensors")
    LearnedPolicy(BlockScorer.from_model(tiny(num_hidden_layers=3), blocks=2)).save(path)
    with pytest.raises(ValueError, match=r"learned.LearnedPolicy.load: .*" + words):
        LearnedPolicy.load(_rewrite(path, tmp_path, **changes))
