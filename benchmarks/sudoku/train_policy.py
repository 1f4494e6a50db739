"""Train a learned unmasking policy for the shipped Sudoku denoiser.

    python benchmarks/sudoku/train_policy.py --scorer transformer --d-model 128 --hidden --hidden-features 64 \
        --init correct --sup-rounds 3 --sup-epochs 8 --base-puzzles 1000 --copies 3 --trainer none \
        --dev-puzzles 500 --threads 2 --out dmkernels/tasks/checkpoints/policy_transformer128_supervised.safetensors

The task-feature policy (``--features sudoku.constraints``: the scorer also
reads the constraint columns of :func:`dmkernels.tasks.sudoku.constraint_features`)
is trained in stages, a supervised start and then GRPO with ``--resume``; the
commands are in ``benchmarks/sudoku/README.md``. So is the generic policy's
(``--scorer block``: a copy of the denoiser's last transformer block reading the
hidden state that enters it plus the step features, no task features; shipped
as ``policy_block_grpo``; with ``--proposal-embedding`` the block also reads the
embeddings of the proposed tokens, shipped as ``policy_block_embed_supervised``).

The denoiser (``load_denoiser("long")``) stays frozen. Training puzzles come
from their own seeded stream (never the held-out one), multiplied by random
Sudoku symmetries. The reward of a filled grid is its cell accuracy over the
blanks plus 1 when the whole grid is solved. Rollouts run through
``dmkernels.infill`` at ``--steps`` model calls with the policy exploring
(Plackett-Luce sampling of the positions); the trained policy then decodes
greedily (top-k of its scores under the same schedule).

``--init`` chooses a supervised warm start before the reinforcement learning:
``confidence`` fits the scores to the LowConfidence ranking (start from the
heuristic, a few dozen updates); ``correct`` runs
:func:`dmkernels.train.supervised` (``--sup-rounds`` rounds of on-policy
rollouts, learning "the proposed digit is the solution's" on the states where
every commit so far was right); ``random`` skips it. ``--trainer none`` stops
after the warm start. With ``--resume``, ``--init correct`` runs more supervised
rounds from the resumed policy (its own rollouts, as DAgger); other ``--init``
values are skipped. ``--prefer-forced`` passes :func:`dmkernels.tasks.sudoku.forced`
as the supervised ``preferred`` label: among right proposals, rank the naked and
hidden singles first (a training label only: the policy still reads no task
feature).

Model selection uses a development set with its own seed
(:func:`dmkernels.tasks.sudoku.dev_puzzles`, ``DEV_SEED``), never the held-out
puzzles: with ``--dev-every N`` the run keeps the scorer with the best
development solve rate (the mean over ``--select-steps`` budgets) among the
starting point and every N-th iteration.
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
from dmkernels.learned import (FEATURES, NUM_FEATURES, BlockScorer, LearnedPolicy, MLPScorer, TransformerScorer,
                               feature_provider, run_scorer)
from dmkernels.tasks import sudoku
from dmkernels.train import grpo, rloo, rollout, supervised

TRAIN_SEED = 4242  # the training puzzle stream (held-out: sudoku.HELDOUT_SEED)
DEV_SEED = sudoku.DEV_SEED  # development puzzles, for model selection


def training_set(n_base: int, copies: int, seed: int):
    puzzles, solutions = sudoku.generate_puzzles(n_base, 24, seed=TRAIN_SEED)
    puzzles, solutions = puzzles.repeat(copies, 1), solutions.repeat(copies, 1)
    # The same random symmetry for a puzzle and its solution: draw from twin generators.
    puzzles = sudoku.augment(puzzles, torch.Generator().manual_seed(seed))
    solutions = sudoku.augment(solutions, torch.Generator().manual_seed(seed))
    assert bool(((puzzles == solutions) | (puzzles == sudoku.MASK_TOKEN)).all())
    return puzzles, solutions


def warm_start(policy, model, puzzles, steps, iterations=60, lr=3e-3, seed=0):
    """Start from the heuristic: on features of exploring rollouts (4 random steps
    per update), the scores regress onto 5 * confidence, so that greedy top-k ranks
    like LowConfidence."""
    opt = torch.optim.AdamW(policy.scorer.parameters(), lr=lr)
    conf = FEATURES.index("confidence")
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for it in range(iterations):
        if it % 10 == 0:
            pick = torch.randperm(puzzles.shape[0], generator=g)[:32]
            _, traj = rollout(policy, model, puzzles[pick], seed=it, explore=3.0, infill=True, steps=steps,
                              mask_id=sudoku.MASK_TOKEN)
        loss = 0.0
        for t in torch.randperm(len(traj), generator=g)[:4].tolist():
            f, e = traj.features[t], traj.eligible[t].float()
            s = run_scorer(policy.scorer, f, traj.hidden[t], traj.tokens[t])
            per = (s - 5 * f[..., conf]) ** 2
            loss = loss + (per * e).sum() / e.sum().clamp_min(1)
        loss = loss / 4
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scorer", choices=("mlp", "transformer", "block"), default="transformer",
                    help="block: a copy of the denoiser's last transformer block reading the hidden state that "
                         "enters it, plus the step features (no task features needed)")
    ap.add_argument("--proposal-embedding", action="store_true",
                    help="--scorer block: the block's input also carries the embedding of each position's step "
                         "token (the proposal where masked, the canvas elsewhere), through a frozen copy of the "
                         "denoiser's embedding table and a zero-initialised projection")
    ap.add_argument("--blocks", type=int, default=1,
                    help="--scorer block: copy the denoiser's last N blocks (reading the hidden state entering them)")
    ap.add_argument("--trainer", choices=("grpo", "rloo", "none"), default="grpo")
    ap.add_argument("--steps", type=int, default=20, help="model calls per puzzle during training")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=16, help="puzzles per iteration")
    ap.add_argument("--group", type=int, default=8, help="rollouts per puzzle")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--explore", type=float, default=1.0)
    ap.add_argument("--init", choices=("random", "confidence", "correct"), default="confidence")
    ap.add_argument("--warm-iterations", type=int, default=60)
    ap.add_argument("--sup-rounds", type=int, default=2, help="--init correct: rollout rounds")
    ap.add_argument("--sup-epochs", type=int, default=10, help="--init correct: epochs per round")
    ap.add_argument("--sup-explore", type=float, default=0.5, help="--init correct: rollout exploration")
    ap.add_argument("--sup-lr", type=float, default=1e-3, help="--init correct: peak learning rate")
    ap.add_argument("--sup-batch", type=int, default=128, help="--init correct: states per update")
    ap.add_argument("--prefer-forced", action="store_true",
                    help="--init correct: rank forced proposals (naked or hidden singles) first among the right "
                         "ones (a training label; the policy still reads no task feature)")
    ap.add_argument("--warm-lr", type=float, default=3e-3, help="learning rate of the confidence warm start")
    ap.add_argument("--copies", type=int, default=10, help="random symmetries of each training puzzle")
    ap.add_argument("--dev-puzzles", type=int, default=0, help="development puzzles for model selection")
    ap.add_argument("--dev-every", type=int, default=20)
    ap.add_argument("--hidden-features", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", help="start from this policy checkpoint (skips --init)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--mlp-hidden", type=int, default=16, help="width of the MLP scorer's hidden layer")
    ap.add_argument("--features", nargs="*", default=[],
                    help="feature providers the policy reads besides FEATURES (e.g. sudoku.constraints)")
    ap.add_argument("--kl", type=float, default=0.04, help="GRPO: weight of the KL term to the starting policy")
    ap.add_argument("--select-steps", type=int, nargs="*", default=None,
                    help="model selection: mean development solve rate over these budgets (default: --steps)")
    ap.add_argument("--eval-steps", type=int, nargs="*", default=None,
                    help="held-out report at these budgets too (default: --steps only)")
    ap.add_argument("--inner-epochs", type=int, default=1)
    ap.add_argument("--hidden", action="store_true", help="the scorer also reads the denoiser's last hidden state")
    ap.add_argument("--base-puzzles", type=int, default=200)
    ap.add_argument("--eval-puzzles", type=int, default=100, help="held-out puzzles for the before/after report")
    ap.add_argument("--denoiser", default="long", help="a budget name (short, long) or a .safetensors path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    cpu0 = time.process_time()
    if args.denoiser.endswith(".safetensors"):
        denoiser = sudoku.load_denoiser(path=args.denoiser)
    else:
        denoiser = sudoku.load_denoiser(args.denoiser)
    model = NoMaskProposals(denoiser, sudoku.MASK_TOKEN)
    puzzles, solutions = training_set(args.base_puzzles, args.copies, args.seed)
    hidden = dict(hidden_size=denoiser.config.hidden_size, hidden_features=args.hidden_features) if args.hidden else {}
    if args.resume:
        policy = LearnedPolicy.load(args.resume)
        policy.scorer.train()
        # --init correct with --resume: more supervised rounds (rollouts of the resumed
        # policy, as DAgger), continuing from its weights; any other --init is skipped.
        args.init = "correct" if args.init == "correct" else "resumed"
    else:
        width = NUM_FEATURES + sum(feature_provider(n).width for n in args.features)
        if args.scorer == "block":  # reads hidden_states[-1 - blocks] itself: --hidden does not apply
            scorer = BlockScorer.from_model(denoiser, num_features=width, proposal_embedding=args.proposal_embedding,
                                            blocks=args.blocks)
        elif args.scorer == "transformer":
            scorer = TransformerScorer(num_features=width, d_model=args.d_model, ff=4 * args.d_model,
                                       max_positions=sudoku.NUM_CELLS, **hidden)
        else:
            scorer = MLPScorer(num_features=width, hidden=args.mlp_hidden, **hidden)
        policy = LearnedPolicy(scorer, features=args.features)
        if args.init != "random":
            # "correct" starts its first rollouts from the heuristic too: a random scorer
            # errs at once, leaving few right-so-far states to learn from.
            loss = warm_start(policy, model, puzzles, args.steps, args.warm_iterations, lr=args.warm_lr,
                              seed=args.seed)
            print(f"warm start (confidence): loss {loss:.4f}, {time.time() - t0:.0f} s", flush=True)
    if args.init == "correct":
        def sup_log(rec):
            print(f"supervised round {rec['round']} epoch {rec['epoch']}: {rec['states']} states, "
                  f"loss {rec['loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)
        sup = supervised(policy, model, puzzles, solutions, rounds=args.sup_rounds, epochs=args.sup_epochs,
                         explore=args.sup_explore, seed=args.seed, infill=True, steps=args.steps,
                         lr=args.sup_lr, batch_size=args.sup_batch,
                         mask_id=sudoku.MASK_TOKEN, log=sup_log,
                         preferred=sudoku.forced if args.prefer_forced else None)

    held_p, held_s = sudoku.heldout_puzzles(args.eval_puzzles)

    def greedy(p, s, rival=None, steps=None):
        """Solve rate and cell accuracy at --steps calls (or ``steps``) of the policy, greedy
        (the trainers explore in their rollouts only, never on the policy itself), or of a rival."""
        policy.scorer.eval()
        try:
            r = evaluate(model.model, p, s, rival or policy, steps or args.steps)
        finally:
            policy.scorer.train()
        r.pop("solved")
        return r

    def report(tag):
        out = {}
        for steps in args.eval_steps or [args.steps]:
            r = out[steps] = greedy(held_p, held_s, steps=steps)
            print(f"{tag}: held-out at {steps} calls solved {100 * r['solve_rate']:.1f}%  "
                  f"cells {100 * r['cell_accuracy']:.1f}%  ({time.time() - t0:.0f} s)", flush=True)
        return out[args.steps] if not args.eval_steps else out

    dev_p, dev_s = sudoku.dev_puzzles(args.dev_puzzles) if args.dev_puzzles else (None, None)
    best = dict(dev=-1.0, state=None, iteration=None)

    def select(tag, iteration):
        if dev_p is None:
            return
        rates = {}
        for steps in args.select_steps or [args.steps]:
            rates[steps] = greedy(dev_p, dev_s, steps=steps)["solve_rate"]
        score = sum(rates.values()) / len(rates)
        print(f"{tag}: dev solved " + ", ".join(f"{100 * v:.1f}% at {k}" for k, v in rates.items())
              + f" ({time.time() - t0:.0f} s)", flush=True)
        if score > best["dev"]:
            best.update(dev=score, iteration=iteration,
                        state={k: v.detach().clone() for k, v in policy.scorer.state_dict().items()})

    select("warm start", -1)
    before = report("before")
    ref = greedy(held_p, held_s, P.LowConfidence())
    print(f"LowConfidence at {args.steps} calls: solved {100 * ref['solve_rate']:.1f}%", flush=True)

    def reward(sequences, index):
        idx = index.to(sequences.device)
        acc = sudoku.cell_accuracy(sequences, solutions[idx], puzzles[idx])
        return acc + sudoku.solved(sequences, puzzles[idx]).float()

    def log(rec):
        if rec["iteration"] % args.dev_every == args.dev_every - 1:
            select(f"iter {rec['iteration']}", rec["iteration"])
        if rec["iteration"] % 10 == 0:
            print(f"iter {rec['iteration']:4d} reward {rec['reward']:.3f} loss {rec['loss']:+.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    common = dict(iterations=args.iterations, prompts_per_iteration=args.prompts, lr=args.lr,
                  explore=args.explore, seed=args.seed, infill=True, steps=args.steps, mask_id=sudoku.MASK_TOKEN,
                  log=log)
    if args.trainer == "none":
        history = []
    elif args.trainer == "grpo":
        history = grpo(policy, model, puzzles, reward, group_size=args.group, inner_epochs=args.inner_epochs,
                       kl_coef=args.kl, **common)
    else:
        history = rloo(policy, model, puzzles, reward, samples=args.group, **common)
    if best["state"] is not None:
        policy.scorer.load_state_dict(best["state"])
        print(f"kept the scorer of iteration {best['iteration']} (dev solved {100 * best['dev']:.1f}%)")
    after = report("after")
    policy.save(args.out)
    meta = dict(command=" ".join(sys.argv), args=vars(args), wall_seconds=round(time.time() - t0),
                cpu_seconds=round(time.process_time() - cpu0), torch=torch.__version__,
                heldout_before=before, heldout_after=after, low_confidence=ref,
                kept_iteration=best["iteration"], dev_solve_rate=best["dev"] if dev_p is not None else None,
                # What was trained: with --resume, the scorer flags in args are the parser's defaults.
                scorer=dict(getattr(policy.scorer, "config", {}), features=list(policy.features)))
    if history:
        meta.update(reward_first10=sum(h["reward"] for h in history[:10]) / min(10, len(history)),
                    reward_last10=sum(h["reward"] for h in history[-10:]) / min(10, len(history)))
    if args.init == "correct":
        meta.update(supervised_loss_first=sup[0]["loss"], supervised_loss_last=sup[-1]["loss"])
    if args.resume and Path(args.resume).with_suffix(".json").exists():
        # The record of the stage this one started from (e.g. the supervised start of a GRPO run).
        meta["resumed_from"] = dict(path=args.resume,
                                    training=json.loads(Path(args.resume).with_suffix(".json").read_text()))
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
