"""A slice of the Sudoku quality benchmark (dmkernels/bench/quality.py) on the
shipped denoiser: order must visibly matter, and the shipped learned policies
must load and run."""
import json
import os

import pytest
import torch

from dmkernels import policies as P
from dmkernels.bench import quality
from dmkernels.tasks import sudoku

N = 32


@pytest.fixture(scope="module")
def heldout():
    return sudoku.heldout_puzzles(N)


@pytest.fixture(scope="module")
def denoiser():
    return sudoku.load_denoiser("long")


def test_confidence_beats_random_and_the_oracle_beats_both(heldout, denoiser):
    puzzles, solutions = heldout
    rand = quality.evaluate(denoiser, puzzles, solutions, P.Random(), 20)
    conf = quality.evaluate(denoiser, puzzles, solutions, P.LowConfidence(), 20)
    oracle = quality.evaluate(denoiser, puzzles, solutions, quality.Oracle(solutions), 20)
    assert rand["model_calls"] == conf["model_calls"] == 20
    assert conf["cell_accuracy"] > rand["cell_accuracy"] + 0.1
    assert conf["solve_rate"] >= rand["solve_rate"]
    assert oracle["solve_rate"] > conf["solve_rate"]
    assert 0 <= rand["solve_rate"] <= 1 and rand["n_puzzles"] == N


def test_adaptive_policies_count_calls_per_puzzle(heldout, denoiser):
    puzzles, solutions = heldout
    r = quality.evaluate(denoiser, puzzles[:8], solutions[:8], P.EntropyBounded(0.1), None)
    blanks = (puzzles[:8] == sudoku.MASK_TOKEN).sum(-1).float()
    assert 1 <= r["model_calls"] <= float(blanks.max())
    full = quality.evaluate(denoiser, puzzles[:8], solutions[:8], P.EntropyBounded(0.0), None)
    assert full["model_calls"] == pytest.approx(float(blanks.mean()))  # gamma 0: one cell per call


def test_shipped_learned_policies_load_and_run(heldout, denoiser):
    shipped = quality.learned_policies(str(sudoku.checkpoint_dir()))
    assert shipped, "no learned policy checkpoint is committed"
    puzzles, solutions = heldout
    for name, path in shipped:
        policy = quality.LearnedPolicy.load(path)
        r = quality.evaluate(denoiser, puzzles[:8], solutions[:8], policy, 20 if policy.selection == "topk" else None)
        assert r["cell_accuracy"] > 0.3, name
        meta = json.loads(open(os.path.splitext(path)[0] + ".json").read())
        # Training improved what it optimised: the reward, and/or the supervised loss.
        assert "reward_last10" in meta or "supervised_loss_last" in meta, name
        if "reward_last10" in meta:
            assert meta["reward_last10"] > meta["reward_first10"], name
        if "supervised_loss_last" in meta:
            assert meta["supervised_loss_last"] < meta["supervised_loss_first"], name


def test_quality_cli_writes_records_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "SCHEDULED_STEPS", (20,))
    records = quality.run(n_puzzles=6, budgets=("long",), quick=True, dev_puzzles=4, log=lambda *_: None)
    fields = {"policy", "model_calls", "solve_rate", "cell_accuracy", "n_puzzles", "set"}
    assert records and all(fields <= set(r) for r in records)
    rule = [r for r in records if r["policy"] == quality.HAND_RULE]
    assert {r["set"] for r in rule} == {"heldout", "dev"} and all("best_heuristic" in r for r in rule)
    dev = [r for r in records if r["set"] == "dev"]
    assert dev and all(r["n_puzzles"] == 4 and r["steps"] == 20 for r in dev)
    assert not {"Random", "Oracle"} & {r["policy"] for r in dev}
    for r in records:
        if r["policy"].startswith("Learned"):
            assert "gain_over_hand_rule" in r and "gain_over_best_heuristic" in r
    pytest.importorskip("matplotlib")
    quality.plot(records, str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000
    assert torch.isfinite(torch.tensor([r["solve_rate"] for r in records])).all()


def test_a_hidden_state_policy_runs_in_the_benchmark(heldout, denoiser):
    from dmkernels.learned import MLPScorer
    puzzles, solutions = heldout
    policy = quality.LearnedPolicy(MLPScorer(hidden_size=denoiser.config.hidden_size))
    r = quality.evaluate(denoiser, puzzles[:4], solutions[:4], policy, 10)
    assert r["model_calls"] == 10 and 0 <= r["cell_accuracy"] <= 1


def test_paired_gain_and_the_comparison_to_the_best_heuristic():
    a, b = [1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0]
    gain, lo, hi = quality.paired_gain(a, b)
    assert gain == pytest.approx(2 / 8) and 0 <= lo < gain < hi <= 1
    same = quality.paired_gain(a, a)
    assert same == (0.0, 0.0, 0.0)  # identical outcomes: no spread at all
    rec = lambda name, solved, steps=20: dict(policy=name, solved=solved, steps=steps, denoiser="long",  # noqa: E731
                                              solve_rate=sum(solved) / len(solved))
    records = [rec("LowConfidence", b), rec("Margin", [0] * 8), rec("Entropy", [1, 0, 0, 0, 0, 0, 0, 0]),
               rec("Learned[x]", a), rec("Learned[x]", a, steps=10), rec("Random", [1] * 8)]
    quality.compare_to_heuristics(records)
    learned = records[3]
    assert learned["best_heuristic"] == "LowConfidence"  # Random is not a heuristic rival
    assert learned["gain_over_best_heuristic"] == pytest.approx(0.25)
    assert "best_heuristic" not in records[4]  # no heuristic ran at that budget
    assert "gain_over_hand_rule" not in learned  # no hand rule ran
    # The hand rule: compared with the heuristics; a learned policy also with it, on the same set only.
    records += [rec(quality.HAND_RULE, [1, 1, 0, 0, 0, 1, 1, 0]),
                dict(rec("Learned[x]", a), set="dev"), dict(rec("Margin", [1] * 8), set="dev")]
    quality.compare_to_heuristics(records)
    rule = records[6]
    assert rule["best_heuristic"] == "LowConfidence" and rule["gain_over_best_heuristic"] == pytest.approx(1 / 8)
    assert "gain_over_hand_rule" not in rule
    assert learned["gain_over_hand_rule"] == pytest.approx(1 / 8)
    assert records[7]["best_heuristic"] == "Margin" and records[7]["gain_over_best_heuristic"] == pytest.approx(-3 / 8)
    assert "gain_over_hand_rule" not in records[7]  # the hand rule ran on the held-out set only
