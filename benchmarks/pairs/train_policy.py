"""Train a learned few-step order for the Pairs task with RLOO (dmkernels.train.rloo).

    python benchmarks/pairs/train_policy.py --calls 4 --init confidence --iterations 1500 --dev-every 25 \
        --lr 1e-2 --seed 0      # writes dmkernels/tasks/checkpoints/pairs_order_rloo_4.*

The policy: ``LearnedPolicy(MLPScorer())`` on the built-in features only
(confidence, margin, entropy, log-probability, position in the block, step
fraction, mask bit; no task features), top-k selection with LLaDA's linear
counts, so it commits exactly as many positions per call as LowConfidence.
The shipped Pairs denoiser stays frozen; rollouts run through the real sampler
(``dmkernels.generate``, one block of 16, tokens sampled at temperature 1 as
in the benchmark) at ``--calls`` calls.

1. Warm start (``--init confidence``): the scores regress onto 5 * confidence
   on states of exploring rollouts, so that the policy starts as LowConfidence.
2. RLOO: ``--iterations`` iterations of ``--prompts`` training prompts x
   ``--samples`` rollouts exploring at ``--explore`` (Plackett-Luce on
   score / explore), REINFORCE with the leave-one-out baseline. Reward: the
   example is right (1) plus the fraction of right pairs.
3. Model selection on the development set (``pairs.dev_set``, 1000 examples):
   every ``--dev-every`` iterations the deterministic policy is evaluated
   there and the best state is kept (ties to the later one: the development
   set saturates while the exploring reward still rises). The held-out set is
   never read.

Training prompts come from ``pairs.generate(--train-n, pairs.TRAIN_SEED + 1)``,
a stream that neither the held-out nor the development set uses.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from dmkernels.bench.orders import evaluate
from dmkernels.learned import FEATURES, LearnedPolicy, MLPScorer
from dmkernels.policies import LowConfidence
from dmkernels.tasks import pairs
from dmkernels.train import rloo, rollout


def warm_start(policy, net, prompts, calls, iterations, lr, seed):
    opt = torch.optim.AdamW(policy.scorer.parameters(), lr=lr)
    conf = FEATURES.index("confidence")
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for it in range(iterations):
        if it % 10 == 0:
            pick = torch.randperm(prompts.shape[0], generator=g)[:64]
            _, traj = rollout(policy, net, prompts[pick], seed=seed + it, explore=3.0, gen_length=pairs.GEN_LENGTH,
                              block_length=pairs.GEN_LENGTH, steps=calls, temperature=pairs.TEMPERATURE)
        loss = 0.0
        for t in range(len(traj)):
            f, e = traj.features[t], traj.eligible[t].float()
            per = (policy.scorer(f) - 5 * f[..., conf]) ** 2
            loss = loss + (per * e).sum() / e.sum().clamp_min(1)
        loss = loss / len(traj)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, required=True, help="model calls per block (the budget trained for)")
    ap.add_argument("--init", choices=("confidence", "random"), default="confidence")
    ap.add_argument("--warm-iterations", type=int, default=100)
    ap.add_argument("--warm-lr", type=float, default=1e-2)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--explore", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--train-n", type=int, default=4000)
    ap.add_argument("--dev-n", type=int, default=1000)
    ap.add_argument("--dev-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="default dmkernels/tasks/checkpoints/pairs_order_rloo_<calls>.safetensors")
    args = ap.parse_args(argv)
    out = Path(args.out or pairs.checkpoint_dir() / f"pairs_order_rloo_{args.calls}.safetensors")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    model = pairs.load_denoiser()
    net = pairs.AnswerProposals(model)
    train_prompts, _ = pairs.generate(args.train_n, pairs.TRAIN_SEED + 1)
    dev_prompts, _ = pairs.dev_set(args.dev_n)
    policy = LearnedPolicy(MLPScorer(hidden=args.hidden), selection="topk")
    kw = dict(gen_length=pairs.GEN_LENGTH, block_length=pairs.GEN_LENGTH, steps=args.calls,
              temperature=pairs.TEMPERATURE)

    def dev(p):
        return evaluate(model, dev_prompts, p, args.calls)["right_rate"]

    baseline = dev(LowConfidence())
    print(f"development set, {args.calls} calls: LowConfidence {100 * baseline:.1f}%", flush=True)
    if args.init == "confidence":
        loss = warm_start(policy, net, train_prompts, args.calls, args.warm_iterations, args.warm_lr, args.seed)
        print(f"warm start: loss {loss:.4f}", flush=True)
    start_dev = dev(policy)
    print(f"start: development {100 * start_dev:.1f}%  ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = dict(iteration=-1, dev=start_dev, state=copy.deepcopy(policy.scorer.state_dict()))
    curve = [dict(iteration=-1, dev=start_dev)]
    rewards = []

    def reward_fn(sequences, index):
        p = train_prompts[index]
        return pairs.correct(sequences, p).float() + pairs.pair_accuracy(sequences, p)

    def log(rec):
        rewards.append(rec["reward"])
        it = rec["iteration"]
        if (it + 1) % args.dev_every == 0:
            d = dev(policy)
            curve.append(dict(iteration=it, dev=d))
            # Ties to the later state: the development set saturates while the exploring
            # reward still rises, and the later state is further from the decision boundary.
            if d >= best["dev"]:
                best.update(iteration=it, dev=d, state=copy.deepcopy(policy.scorer.state_dict()))
            recent = rewards[-args.dev_every:]
            print(f"iteration {it + 1:4d}  reward {sum(recent) / len(recent):.3f}  development {100 * d:.1f}%  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rloo(policy, net, train_prompts, reward_fn, iterations=args.iterations, prompts_per_iteration=args.prompts,
         samples=args.samples, lr=args.lr, explore=args.explore, seed=args.seed, log=log, **kw)
    policy.scorer.load_state_dict(best["state"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"kept iteration {best['iteration']} (development {100 * best['dev']:.1f}%); {wall:.0f} s wall, "
          f"{cpu:.0f} s CPU", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    policy.save(str(out))
    record = dict(command="python " + " ".join(shlex.quote(a) for a in sys.argv), calls=args.calls, seed=args.seed,
                  init=args.init, iterations=args.iterations, prompts=args.prompts, samples=args.samples, lr=args.lr,
                  explore=args.explore, kept_iteration=best["iteration"], dev_right=best["dev"],
                  dev_lowconfidence=baseline, dev_start=start_dev, dev_curve=curve,
                  reward_first10=sum(rewards[:10]) / max(1, len(rewards[:10])),
                  reward_last10=sum(rewards[-10:]) / max(1, len(rewards[-10:])),
                  wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1), torch=torch.__version__, threads=1,
                  parameters=sum(p.numel() for p in policy.scorer.parameters()))
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
