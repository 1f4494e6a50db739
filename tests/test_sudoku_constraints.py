"""Sudoku constraints on the device (dmkernels.tasks.sudoku.constraints), the
"sudoku.constraints" feature provider, the hand rule SinglesFirst and the
development set: checked against a plain Python reading of the rules."""
import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.bench import quality
from dmkernels.learned import NUM_FEATURES, LearnedPolicy, MLPScorer
from dmkernels.policies import StepContext
from dmkernels.tasks import sudoku
from dmkernels.testing import forbid_host_sync

M = sudoku.MASK_TOKEN


def peers_of(i):
    r, c = divmod(i, 9)
    b = (r // 3, c // 3)
    return [j for j in range(81) if j != i and (j // 9 == r or j % 9 == c or ((j // 9) // 3, (j % 9) // 3) == b)]


def units_of(i):
    r, c = divmod(i, 9)
    rows = [r * 9 + k for k in range(9)]
    cols = [k * 9 + c for k in range(9)]
    br, bc = 3 * (r // 3), 3 * (c // 3)
    box = [(br + a) * 9 + bc + b for a in range(3) for b in range(3)]
    return rows, cols, box


def by_hand(canvas, proposals):
    """The rules read cell by cell in Python."""
    canvas, proposals = canvas.tolist(), proposals.tolist()
    legal = [[d for d in range(9) if canvas[i] == M and all(canvas[j] != d for j in peers_of(i))] for i in range(81)]
    out = dict(legal_count=[], proposal_legal=[], naked_single=[], hidden_single=[], peers_same=[])
    for i in range(81):
        p = proposals[i]
        ok = canvas[i] == M and p in legal[i]
        out["legal_count"].append(len(legal[i]))
        out["proposal_legal"].append(ok)
        out["naked_single"].append(ok and len(legal[i]) == 1)
        out["hidden_single"].append(ok and any(sum(p in legal[j] for j in unit) == 1 for unit in units_of(i)))
        out["peers_same"].append(sum(canvas[i] == M and canvas[j] == M and proposals[j] == p and 0 <= p < 9
                                     for j in peers_of(i)))
    return {k: torch.tensor(v) for k, v in out.items()}


def random_states(n=6, seed=0):
    """Held-out puzzles with some blanks filled (rightly or not) and random proposals,
    some of them no digit at all (-1, MASK)."""
    g = torch.Generator().manual_seed(seed)
    puzzles, solutions = sudoku.heldout_puzzles(n)
    fill = (torch.rand(puzzles.shape, generator=g) < 0.3) & (puzzles == M)
    wrong = torch.randint(0, 9, puzzles.shape, generator=g)
    filled = torch.where(torch.rand(puzzles.shape, generator=g) < 0.8, solutions, wrong)
    canvas = torch.where(fill, filled, puzzles)
    proposals = torch.where(torch.rand(puzzles.shape, generator=g) < 0.7, solutions,
                            torch.randint(-1, 10, puzzles.shape, generator=g))
    return canvas, proposals, solutions


def test_constraints_match_the_rules_read_by_hand():
    canvas, proposals, _ = random_states()
    c = sudoku.constraints(canvas, proposals)
    assert c["legal"].shape == (6, 81, 9) and c["legal"].dtype == torch.bool
    for b in range(canvas.shape[0]):
        want = by_hand(canvas[b], proposals[b])
        for name, value in want.items():
            assert torch.equal(c[name][b].to(value.dtype), value), (b, name)
    # The test states have every kind of cell.
    for name in ("proposal_legal", "naked_single", "hidden_single"):
        assert c[name].any() and not c[name].all(), name
    assert (c["peers_same"] > 0).any()


def test_singles_are_forced():
    """On puzzles with their unique solutions, a proposal flagged as a single is the
    solution's digit, and the solution's digit is always legal."""
    canvas, proposals, solutions = random_states(20, seed=1)
    canvas = torch.where(canvas == M, M, sudoku.heldout_puzzles(20)[0])  # givens only: every state solvable
    c = sudoku.constraints(canvas, proposals)
    single = c["naked_single"] | c["hidden_single"]
    assert single.any()
    assert (proposals[single] == solutions[single]).all()
    right = sudoku.constraints(canvas, solutions)
    assert torch.equal(right["proposal_legal"], canvas == M)


def test_forced_reads_the_canvas_from_the_step_tokens():
    """forced(step tokens, eligible): the singles of the canvas the step tokens
    hold outside ``eligible``, at eligible cells only."""
    canvas, proposals, _ = random_states(6, seed=2)
    eligible = canvas == M
    tokens = torch.where(eligible, proposals, canvas)
    c = sudoku.constraints(canvas, proposals)
    want = (c["naked_single"] | c["hidden_single"]) & eligible
    got = sudoku.forced(tokens, eligible)
    assert got.dtype == torch.bool and torch.equal(got, want) and want.any() and not want.all()
    with pytest.raises(TypeError, match=r"forced: eligible must be one of \(bool\), got int64"):
        sudoku.forced(tokens, eligible.long())
    with pytest.raises(ValueError, match=r"forced: eligible must have shape \[6, 81\]"):
        sudoku.forced(tokens, eligible[:, :80])


def test_constraints_refuse_a_canvas_that_is_not_a_grid():
    with pytest.raises(ValueError, match="constraints: canvas and proposals must both be"):
        sudoku.constraints(torch.zeros(2, 80, dtype=torch.long), torch.zeros(2, 80, dtype=torch.long))


def ctx_of(canvas, proposals, eligible=None, quota=None):
    eligible = canvas == M if eligible is None else eligible
    logits = torch.randn(*canvas.shape, sudoku.VOCAB_SIZE)
    stats = dmkernels.token_stats(logits, positions=eligible)._replace(token=proposals)
    return StepContext(stats=stats, eligible=eligible, step=0, steps=20, block=0,
                       quota=quota if quota is not None else torch.full((canvas.shape[0],), 3),
                       logits=logits, x=canvas, generator=None, schedule=None)


def test_the_provider_is_registered_and_zero_off_the_eligible_cells():
    canvas, proposals, _ = random_states()
    provider = P.feature_provider("sudoku.constraints")
    assert provider.fn is sudoku.constraint_features and provider.columns == sudoku.CONSTRAINT_FEATURES
    eligible = (canvas == M) & (torch.rand(canvas.shape) < 0.7)
    f = sudoku.constraint_features(ctx_of(canvas, proposals, eligible))
    assert f.shape == (6, 81, 5) and f.dtype == torch.float32
    c = sudoku.constraints(canvas, proposals)
    expected = torch.stack([c["legal_count"] / 9, c["proposal_legal"], c["naked_single"], c["hidden_single"],
                            c["peers_same"]], -1).float()
    assert torch.equal(f[eligible], expected[eligible])
    assert (f[~eligible] == 0).all()
    with pytest.raises(ValueError, match="constraint_features: the step's block has 40 positions"):
        sudoku.constraint_features(ctx_of(canvas[:, :40], proposals[:, :40]))


def test_singles_first_takes_the_singles_before_confidence():
    canvas, proposals, _ = random_states(4, seed=2)
    ctx = ctx_of(canvas, proposals, quota=torch.tensor([1, 2, 3, 0]))
    c = sudoku.constraints(canvas, proposals)
    single = c["naked_single"] | c["hidden_single"]
    # Make every non-single far more confident than every single.
    ctx.stats.confidence.copy_(torch.where(single, 0.1, 0.99))
    chosen = sudoku.SinglesFirst().select(ctx)
    assert torch.equal(chosen.sum(-1), torch.minimum(ctx.quota, ctx.eligible.sum(-1)))
    for b in range(4):
        n = min(int(ctx.quota[b]), int(single[b].sum()))
        assert int((chosen[b] & single[b]).sum()) == n
    with pytest.raises(ValueError, match="SinglesFirst: the step's block has 9 positions"):
        sudoku.SinglesFirst().select(ctx_of(canvas[:, :9], proposals[:, :9]))


@pytest.fixture(scope="module")
def denoiser():
    torch.set_num_threads(1)
    return sudoku.load_denoiser("long")


def test_the_hand_rule_and_a_feature_policy_run_without_host_sync(denoiser):
    puzzles, _ = sudoku.heldout_puzzles(4)
    policy = LearnedPolicy(MLPScorer(num_features=NUM_FEATURES + 5), features=["sudoku.constraints"])
    net = quality.NoMaskProposals(denoiser, M)
    for p in (sudoku.SinglesFirst(), policy):
        with forbid_host_sync():
            out = dmkernels.infill(net, puzzles, steps=10, policy=p, mask_id=M, seed=0)
        assert not (out.sequences == M).any()
        assert ((out.sequences == puzzles) | (puzzles == M)).all()


def test_the_same_tokens_on_every_backend(denoiser, kernel_backend):
    """The hand rule and a feature policy pass the step's backend to their op, and
    the constraints run on the step's device: every backend fills the same digits
    as the reference."""
    backend = kernel_backend
    puzzles, _ = sudoku.heldout_puzzles(2)
    torch.manual_seed(0)
    policy = LearnedPolicy(MLPScorer(num_features=NUM_FEATURES + 5, hidden=4), features=["sudoku.constraints"])
    for p in (sudoku.SinglesFirst(), policy):
        ref = dmkernels.infill(quality.NoMaskProposals(denoiser, M), puzzles, steps=4, policy=p, mask_id=M,
                               seed=0, backend="reference").sequences
        model = sudoku.load_denoiser("long", device=backend.device)
        if p is policy:
            policy.scorer.to(backend.device)
        out = dmkernels.infill(quality.NoMaskProposals(model, M), puzzles.to(backend.device), steps=4, policy=p,
                               mask_id=M, seed=0, backend=backend.name).sequences
        policy.scorer.cpu()
        assert torch.equal(out.cpu(), ref), type(p).__name__


def test_the_hand_rule_beats_confidence(denoiser):
    """Reading the canvas is the point: on 32 held-out puzzles at 20 calls the hand rule
    solves more than LowConfidence and every single it commits is right."""
    puzzles, solutions = sudoku.heldout_puzzles(32)
    rule = quality.evaluate(denoiser, puzzles, solutions, sudoku.SinglesFirst(), 20)
    conf = quality.evaluate(denoiser, puzzles, solutions, P.LowConfidence(), 20)
    assert rule["solve_rate"] > conf["solve_rate"] + 0.05, (rule["solve_rate"], conf["solve_rate"])


def test_the_development_set_is_its_own_stream():
    dev, dev_solutions = sudoku.dev_puzzles(3)
    held, _ = sudoku.heldout_puzzles(3)
    assert sudoku.DEV_SEED != sudoku.HELDOUT_SEED
    assert torch.equal(dev, sudoku.generate_puzzles(3, 24, seed=sudoku.DEV_SEED)[0])
    assert not (dev == held).all(-1).any()
    assert sudoku.solved(dev_solutions, dev).all() and ((dev == M).sum(-1) == 57).all()


SHIPPED = "policy_mlp_constraints_grpo"


def test_the_shipped_feature_policy_reads_the_constraints_and_beats_the_heuristics(denoiser):
    """The shipped task-feature policy loads by provider name and, on the first 48
    held-out puzzles at 20 calls, solves more than every generic heuristic
    (the full comparison with intervals is the quality benchmark's)."""
    path = sudoku.checkpoint_dir() / f"{SHIPPED}.safetensors"
    policy = LearnedPolicy.load(str(path))
    assert policy.features == ("sudoku.constraints",) and policy.num_features == NUM_FEATURES + 5
    puzzles, solutions = sudoku.heldout_puzzles(48)
    learned = quality.evaluate(denoiser, puzzles, solutions, policy, 20)["solve_rate"]
    best = max(quality.evaluate(denoiser, puzzles, solutions, h(), 20)["solve_rate"]
               for h in (P.LowConfidence, P.Margin, P.Entropy))
    assert learned >= best + 0.05, (learned, best)
