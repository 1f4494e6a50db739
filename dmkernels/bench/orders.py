"""Few-step orders: learned generation orders against the heuristics at equal
model calls, on the Pairs task (:mod:`dmkernels.tasks.pairs`).

``python -m dmkernels.bench quality --orders`` generates the 16-token answer of
every example of the held-out set (the test set, 1000 examples) and of the
development set (1000, the set the learned orders were selected on) in one
block of 16 with the shipped Pairs denoiser, tokens sampled at temperature 1
(``pairs.TEMPERATURE``; the same seed for every policy), at exactly 4 and 8
model calls per block, under:

- the scheduled heuristics ``LowConfidence``, ``Margin``, ``Entropy`` (LLaDA's
  linear counts: 4 or 2 positions per call);
- ``EntropyBounded`` at the same budget (:class:`BudgetedEntropyBounded`:
  EB-Sampler's count, clamped so that the block ends in exactly the budget's
  calls), for gamma 0.01, 0.1 and 1;
- ``Dilated`` at the same budget: ``Dilated()`` itself where its own number of
  calls is the budget (4 on a block of 16: groups of 2, 2, 4 and 8 positions),
  and :class:`DilatedOrder` at both budgets (DUS's coarse-to-fine groups as
  the order, the linear counts as the number per call);
- the shipped learned orders (``pairs.load_policy(calls)``: an ``MLPScorer``
  on the built-in features only, trained with RLOO at that budget by
  ``benchmarks/pairs/train_policy.py``);
- a hand rule that knows the pairing (:class:`HalfFirst`, first halves first):
  the reference for what order alone can reach.

``EntropyBounded(gamma)`` in its own (adaptive) form is also reported, with
the calls it took. A third set, ``nohints`` (the held-out symbols with every
hint hidden), is a shift that nothing was trained or selected on. Per record:
right rate (every pair agrees and every hint is kept), pair accuracy, model
calls per example, hidden pairs whose partners were committed in the same call
(``unrevealed_pairs_together``), the policy's own time per step against the
model call's. The HalfFirst reference and the dilated rules are written for
this task's block of 16 (pairs half a block apart). Every learned record gets
its paired-bootstrap 95% interval of the gain over each heuristic and over the
best one at the same budget and set (:func:`dmkernels.bench.quality.paired_gain`).
"""
from __future__ import annotations

import json
import os
import time

import torch

import dmkernels
from dmkernels import ops
from dmkernels import policies as P
from dmkernels.bench.quality import Counted, paired_gain
from dmkernels.tasks import pairs

BUDGETS = (4, 8)
N_TEST = 1000
N_DEV = 1000
GAMMAS = (0.01, 0.1, 1.0)
HAND_RULE = "HalfFirst (knows the pairing)"


class BudgetedEntropyBounded(P.Policy):
    """EB-Sampler's rule under a budget: the count is EB's (the longest prefix,
    by the error proxy, with ``sum(H) - max(H) <= gamma``), clamped per row to
    at least ``ceil(masked / steps left)`` (so the block ends in the budget) and
    at most ``masked - (steps left - 1)`` (so every call commits something);
    the positions are the first ``count`` by the error proxy. A block therefore
    takes exactly the scheduled number of calls."""

    uses_quota = False

    def __init__(self, gamma: float = 0.1, error: str = "entropy"):
        super().__init__()
        self.eb = P.EntropyBounded(gamma, error)

    def select(self, ctx):
        s = ctx.stats
        error = {"entropy": s.entropy, "confidence": s.confidence.neg(), "margin": s.margin.neg()}[self.eb.error]
        eb = ops.select_entropy_bounded(error, s.entropy, ctx.eligible, self.eb.gamma, backend=ctx.backend)
        masked = ctx.eligible.sum(-1)
        left = ctx.steps - ctx.step  # this step included; a device scalar when captured
        lo = torch.div(masked + left - 1, left, rounding_mode="floor")
        hi = torch.maximum(masked - (left - 1), lo)
        count = torch.minimum(torch.maximum(eb.sum(-1), lo), hi)
        return ops.select_topk(error.float().neg(), count, ctx.eligible, backend=ctx.backend)


class DilatedOrder(P.Policy):
    """DUS's order at a fixed budget: positions ranked by their dilated group
    (:func:`dmkernels.dilated_groups`, coarse to fine, ties to the lower offset),
    the schedule's count per call."""

    def __init__(self, base: int = 2, schedule=None):
        super().__init__(schedule)
        self.base = base

    def select(self, ctx):
        groups = P.Dilated(self.base).groups(ctx.eligible.shape[1], ctx.eligible.device)
        score = groups.neg().to(torch.float32).expand(ctx.eligible.shape)
        return ops.select_topk(score, ctx.quota, ctx.eligible, backend=ctx.backend)


class HalfFirst(P.Policy):
    """Knows the task: the first half of the block (one partner of every pair)
    before the second, most confident first within a half."""

    def select(self, ctx):
        W = ctx.eligible.shape[1]
        first = (torch.arange(W, device=ctx.eligible.device) < W // 2).to(torch.float32)
        return ops.select_topk(ctx.stats.confidence.float() + 2.0 * first, ctx.quota, ctx.eligible,
                               backend=ctx.backend)


@torch.no_grad()
def evaluate(model, prompts: torch.Tensor, policy: P.Policy, steps: int, *, batch: int = 1000,
             seed: int = 0) -> dict:
    """Right rate, pair accuracy, calls per example and per-step costs of one policy."""
    net = pairs.AnswerProposals(model)
    right, acc, calls, policy_seconds, together = [], 0.0, 0.0, 0.0, 0.0
    first = torch.arange(pairs.GEN_LENGTH) < pairs.NUM_PAIRS
    for lo in range(0, prompts.shape[0], batch):
        p = prompts[lo:lo + batch]
        counted = _Recorded(policy)
        out = dmkernels.generate(net, p, gen_length=pairs.GEN_LENGTH, block_length=pairs.GEN_LENGTH, steps=steps,
                                 policy=counted, temperature=pairs.TEMPERATURE, seed=seed)
        right.append(pairs.correct(out.sequences, p))
        acc += float(pairs.pair_accuracy(out.sequences, p).sum())
        calls += float(counted.active_steps.sum())
        policy_seconds += counted.seconds
        # Unrevealed pairs whose two partners were committed in the same call.
        unknown = torch.cat([p == pairs.UNKNOWN, torch.zeros_like(p, dtype=torch.bool)], dim=1)
        for c in counted.chosen:
            together += float((c & c[:, pairs.partners()] & first & unknown).sum())
    right = torch.cat(right)
    n = prompts.shape[0]
    return dict(right_rate=float(right.float().mean()), right=right.int().tolist(), pair_accuracy=acc / n,
                model_calls=calls / n, n_examples=n, unrevealed_pairs_together=together / n,
                model_ms_per_call=1e3 * net.seconds / max(net.calls, 1),
                policy_ms_per_call=1e3 * policy_seconds / max(net.calls, 1))


class _Recorded(Counted):
    """Counted, keeping every step's chosen mask (off the timed region)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.chosen = []

    def select(self, ctx):
        chosen = super().select(ctx)
        self.chosen.append(chosen.clone())
        return chosen


def scheduled_entries(steps: int, learned: dict) -> list[tuple[str, object]]:
    """(name, policy) of every scheduled entry at ``steps`` calls."""
    out = [("LowConfidence", P.LowConfidence()), ("Margin", P.Margin()), ("Entropy", P.Entropy())]
    out += [(f"EntropyBounded(gamma={g:g}), budgeted", BudgetedEntropyBounded(g)) for g in GAMMAS]
    out.append(("Dilated order, budgeted", DilatedOrder()))
    if steps == int(P.Dilated().groups(pairs.GEN_LENGTH, "cpu").max()) + 1:
        out.append(("Dilated()", P.Dilated()))  # its own number of calls is this budget (checked in run)
    out.append((HAND_RULE, HalfFirst()))
    for calls, policy in learned.items():
        out.append((f"Learned[rloo, trained at {calls} calls]", policy))
    return out


RIVALS = ("LowConfidence", "Margin", "Entropy", "EntropyBounded", "Dilated")


def compare(records: list[dict]) -> None:
    """Adds to each learned record its paired gain (with the 95% interval) over
    every heuristic at the same set and budget, and over the best of them."""
    for r in records:
        if not r["policy"].startswith("Learned") or r["adaptive"]:
            continue
        rivals = [h for h in records if h["set"] == r["set"] and h["steps"] == r["steps"] and not h["adaptive"]
                  and h["policy"].startswith(RIVALS)]
        r["gains"] = {}
        for h in rivals:
            gain, lo, hi = paired_gain(r["right"], h["right"])
            r["gains"][h["policy"]] = dict(gain=gain, ci95=[lo, hi])
        best = max(rivals, key=lambda h: h["right_rate"])
        r.update(best_heuristic=best["policy"], gain_over_best_heuristic=r["gains"][best["policy"]]["gain"],
                 gain_ci95=r["gains"][best["policy"]]["ci95"])
        rule = [h for h in records if h["set"] == r["set"] and h["steps"] == r["steps"] and h["policy"] == HAND_RULE]
        if rule:
            gain, lo, hi = paired_gain(r["right"], rule[0]["right"])
            r.update(gain_over_hand_rule=gain, gain_over_hand_rule_ci95=[lo, hi])


def run(*, n_test: int = N_TEST, n_dev: int = N_DEV, budgets=BUDGETS, quick: bool = False, learned: dict | None = None,
        log=print) -> list[dict]:
    """Every entry on the held-out set (and on ``n_dev`` development examples).
    ``learned``: {calls: policy} instead of the shipped learned orders."""
    torch.set_num_threads(1)
    model = pairs.load_denoiser()
    if learned is None:
        learned = {c: pairs.load_policy(c) for c in pairs.POLICY_CALLS}
    sets = [("heldout", pairs.heldout_set(n_test)[0])]
    if n_dev:
        sets.append(("dev", pairs.dev_set(n_dev)[0]))
    if not quick:
        # A shift no policy was trained or selected on: the held-out symbols with every hint hidden.
        sets.append(("nohints", pairs.generate(n_test, pairs.HELDOUT_SEED, reveal=0.0)[0]))
    records = []

    def add(set_name, name, policy, steps, adaptive):
        r = dict(policy=name, set=set_name, steps=None if adaptive else steps, adaptive=adaptive,
                 **evaluate(model, prompts, policy, steps))
        if not adaptive and r["model_calls"] != steps:
            raise RuntimeError(f"dmkernels.bench.orders: {name} took {r['model_calls']} calls, not {steps}")
        records.append(r)
        log(f"{set_name:>8}  {name:<40} steps {str(r['steps'] or '-'):>2}  calls {r['model_calls']:5.2f}  "
            f"right {100 * r['right_rate']:5.1f}%  pairs {100 * r['pair_accuracy']:5.1f}%  "
            f"together {r['unrevealed_pairs_together']:4.2f}  "
            f"policy {r['policy_ms_per_call']:.3f} ms / model {r['model_ms_per_call']:.3f} ms per call")

    for set_name, prompts in sets:
        for steps in budgets:
            for name, policy in scheduled_entries(steps, learned):
                add(set_name, name, policy, steps, False)
        if not quick:
            # Dilated() in its own form is the 4-call row already.
            for g in GAMMAS:
                add(set_name, f"EntropyBounded(gamma={g:g}), adaptive", P.EntropyBounded(g), 1, True)
    compare(records)
    for r in records:
        if "gains" not in r:
            continue
        where = f"{r['set']:>8}  {r['policy']:<40} steps {r['steps']:>2}"
        for name, g in r["gains"].items():
            log(f"{where}  gain over {name}: {100 * g['gain']:+.1f} points "
                f"(95% paired bootstrap {100 * g['ci95'][0]:+.1f} to {100 * g['ci95'][1]:+.1f})")
        if "gain_over_hand_rule" in r:
            lo, hi = r["gain_over_hand_rule_ci95"]
            log(f"{where}  gain over the hand rule: {100 * r['gain_over_hand_rule']:+.1f} points "
                f"(95% paired bootstrap {100 * lo:+.1f} to {100 * hi:+.1f})")
    return records


def main(args) -> int:
    quick = bool(args.quick)
    n = args.puzzles or (64 if quick else N_TEST)
    t0, c0 = time.perf_counter(), time.process_time()
    records = run(n_test=n, n_dev=0 if quick else N_DEV, budgets=BUDGETS, quick=quick)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"orders benchmark: {wall:.1f} s wall, {cpu:.1f} s CPU, torch {torch.__version__}, 1 thread")
    os.makedirs(args.out_dir, exist_ok=True)
    path = args.json or os.path.join(args.out_dir, "orders_quality.json")
    with open(path, "w") as f:  # one record per line: the per-example lists stay compact
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    print(f"wrote {path}")
    return 0
