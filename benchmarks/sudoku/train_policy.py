"""Train a learned unmasking policy for the shipped Sudoku denoiser.

    python benchmarks/sudoku/train_policy.py --scorer transformer --trainer grpo --steps 20 \
        --iterations 150 --seed 0 --out benchmarks/sudoku/checkpoints/policy_transformer_grpo.safetensors

The denoiser (``load_denoiser("long")``) stays frozen. Training puzzles come
from their own seeded stream (never the held-out one), multiplied by random
Sudoku symmetries. The reward of a filled grid is its cell accuracy over the
blanks plus 1 when the whole grid is solved. Rollouts run through
``dmkernels.infill`` at ``--steps`` model calls with the policy exploring
(Plackett-Luce sampling of the positions); the trained policy then decodes
greedily (top-k of its scores under the same schedule).

``--init`` chooses a supervised warm start before the reinforcement learning
(a few dozen updates on features of exploring rollouts): ``confidence`` fits
the scores to the LowConfidence ranking (start from the heuristic);
``correct`` fits them to "the proposed digit is right" (the reward's own
information, as a context-aware confidence); ``random`` skips it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.bench.quality import NoMaskProposals, evaluate
from dmkernels.learned import FEATURES, LearnedPolicy, MLPScorer, TransformerScorer
from dmkernels.tasks import sudoku
from dmkernels.train import grpo, rloo, rollout

TRAIN_SEED = 4242  # the training puzzle stream (held-out: sudoku.HELDOUT_SEED)


def training_set(n_base: int, copies: int, seed: int):
    puzzles, solutions = sudoku.generate_puzzles(n_base, 24, seed=TRAIN_SEED)
    puzzles, solutions = puzzles.repeat(copies, 1), solutions.repeat(copies, 1)
    # The same random symmetry for a puzzle and its solution: draw from twin generators.
    puzzles = sudoku.augment(puzzles, torch.Generator().manual_seed(seed))
    solutions = sudoku.augment(solutions, torch.Generator().manual_seed(seed))
    assert bool(((puzzles == solutions) | (puzzles == sudoku.MASK_TOKEN)).all())
    return puzzles, solutions


def warm_start(policy, model, puzzles, solutions, steps, target, iterations=60, lr=3e-3, seed=0):
    """Supervised start on features of exploring rollouts (4 random steps per update):
    ``confidence``: scores regress onto 5 * confidence, so greedy top-k ranks like
    LowConfidence; ``correct``: scores are the logit of "the proposed digit is the
    solution's" (binary cross-entropy), a context-aware confidence."""
    opt = torch.optim.AdamW(policy.scorer.parameters(), lr=lr)
    conf = FEATURES.index("confidence")
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for it in range(iterations):
        if it % 10 == 0:
            pick = torch.randperm(puzzles.shape[0], generator=g)[:32]
            _, traj = rollout(policy, model, puzzles[pick], seed=it, explore=3.0, infill=True, steps=steps,
                              mask_id=sudoku.MASK_TOKEN)
            answer = solutions[pick]
        loss = 0.0
        for t in torch.randperm(len(traj), generator=g)[:4].tolist():
            f, e = traj.features[t], traj.eligible[t].float()
            h = traj.hidden[t]
            s = policy.scorer(f) if h is None else policy.scorer(f, h)
            if target == "confidence":
                per = (s - 5 * f[..., conf]) ** 2
            else:
                right = (traj.tokens[t] == answer).float()
                per = torch.nn.functional.binary_cross_entropy_with_logits(s, right, reduction="none")
            loss = loss + (per * e).sum() / e.sum().clamp_min(1)
        loss = loss / 4
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scorer", choices=("mlp", "transformer"), default="transformer")
    ap.add_argument("--trainer", choices=("grpo", "rloo"), default="grpo")
    ap.add_argument("--steps", type=int, default=20, help="model calls per puzzle during training")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=16, help="puzzles per iteration")
    ap.add_argument("--group", type=int, default=8, help="rollouts per puzzle")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--explore", type=float, default=1.0)
    ap.add_argument("--init", choices=("random", "confidence", "correct"), default="confidence")
    ap.add_argument("--warm-iterations", type=int, default=60)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--inner-epochs", type=int, default=1)
    ap.add_argument("--hidden", action="store_true", help="the scorer also reads the denoiser's last hidden state")
    ap.add_argument("--base-puzzles", type=int, default=200)
    ap.add_argument("--eval-puzzles", type=int, default=100, help="held-out puzzles for the before/after report")
    ap.add_argument("--denoiser", default="long", help="a budget name (short, long) or a .safetensors path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    if args.denoiser.endswith(".safetensors"):
        denoiser = sudoku.load_denoiser(path=args.denoiser)
    else:
        denoiser = sudoku.load_denoiser(args.denoiser)
    model = NoMaskProposals(denoiser, sudoku.MASK_TOKEN)
    puzzles, solutions = training_set(args.base_puzzles, 10, args.seed)
    hidden = dict(hidden_size=denoiser.config.hidden_size) if args.hidden else {}
    if args.scorer == "transformer":
        scorer = TransformerScorer(d_model=args.d_model, ff=4 * args.d_model, max_positions=sudoku.NUM_CELLS,
                                   **hidden)
    else:
        scorer = MLPScorer(**hidden)
    policy = LearnedPolicy(scorer)
    if args.init != "random":
        loss = warm_start(policy, model, puzzles, solutions, args.steps, args.init, args.warm_iterations,
                          seed=args.seed)
        print(f"warm start ({args.init}): loss {loss:.4f}, {time.time() - t0:.0f} s", flush=True)

    held_p, held_s = sudoku.heldout_puzzles(args.eval_puzzles)

    def report(tag):
        policy.scorer.eval()
        r = evaluate(model.model, held_p, held_s, policy, args.steps)
        policy.scorer.train()
        print(f"{tag}: held-out solved {100 * r['solve_rate']:.1f}%  cells {100 * r['cell_accuracy']:.1f}%  "
              f"({time.time() - t0:.0f} s)", flush=True)
        return r

    before = report("before")
    ref = evaluate(model.model, held_p, held_s, P.LowConfidence(), args.steps)
    print(f"LowConfidence at {args.steps} calls: solved {100 * ref['solve_rate']:.1f}%", flush=True)

    def reward(sequences, index):
        idx = index.to(sequences.device)
        acc = sudoku.cell_accuracy(sequences, solutions[idx], puzzles[idx])
        return acc + sudoku.solved(sequences, puzzles[idx]).float()

    def log(rec):
        if rec["iteration"] % 10 == 0:
            print(f"iter {rec['iteration']:4d} reward {rec['reward']:.3f} loss {rec['loss']:+.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    common = dict(iterations=args.iterations, prompts_per_iteration=args.prompts, lr=args.lr,
                  explore=args.explore, seed=args.seed, infill=True, steps=args.steps, mask_id=sudoku.MASK_TOKEN,
                  log=log)
    if args.trainer == "grpo":
        history = grpo(policy, model, puzzles, reward, group_size=args.group, inner_epochs=args.inner_epochs,
                       **common)
    else:
        history = rloo(policy, model, puzzles, reward, samples=args.group, **common)
    after = report("after")
    policy.save(args.out)
    meta = dict(command=" ".join(sys.argv), args=vars(args), wall_seconds=round(time.time() - t0),
                heldout_before=before, heldout_after=after, low_confidence=ref,
                reward_first10=sum(h["reward"] for h in history[:10]) / min(10, len(history)),
                reward_last10=sum(h["reward"] for h in history[-10:]) / min(10, len(history)))
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
