"""Quality benchmark: Sudoku, where the unmasking order decides the outcome.

``python -m dmkernels.bench quality`` fills the fixed held-out puzzles
(:func:`dmkernels.tasks.sudoku.heldout_puzzles`, 24 givens, 57 blanks) with the
shipped denoiser through ``dmkernels.infill`` under every policy, at several
model-call budgets, and reports per policy and budget: solve rate (whole grid
valid and every given kept), cell accuracy over the blanks, and model calls per
puzzle (for adaptive policies, the calls a puzzle would take alone: the steps
in which it still had a mask). Writes a JSON list of records
(``policy, model_calls, solve_rate, cell_accuracy, n_puzzles`` and more) and a
plot of solve rate against model calls.

Greedy decoding throughout (temperature 0): only the order differs. The
oracle commits, among masked cells whose proposal is right, the most confident
(it reads the solution): the ceiling that order alone can reach. Beside the
generic heuristics runs a Sudoku-specific reference, the hand rule "singles
first, then confidence" (:class:`dmkernels.tasks.sudoku.SinglesFirst`), so that
a reader sees whether a learned policy adds anything over reading the rules.

Each learned policy and the hand rule get their gain over the best generic
heuristic at the same budget (and each learned policy its gain over the hand
rule), with a paired bootstrap 95% interval over the puzzles. The full run also
measures the long denoiser's scheduled policies on the 500-puzzle development
set (:func:`dmkernels.tasks.sudoku.dev_puzzles`, the set used for model
selection; records with ``"set": "dev"``); the held-out set selects nothing.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.constants import LLADA_MASK_ID
from dmkernels.learned import LearnedPolicy
from dmkernels.tasks import sudoku  # registers the "sudoku.constraints" features the shipped policies read
from dmkernels.tasks._proposals import BannedProposals

SCHEDULED_STEPS = (10, 20, 57)
QUICK_STEPS = (20,)
DEV_PUZZLES = 500
HAND_RULE = "SinglesFirst (Sudoku rule)"
# The shipped task-feature policy: every other learned policy also gets its gain over it.
TASK_FEATURE_POLICY = "Learned[mlp_constraints_grpo]"


# NoMaskProposals(model, mask_id): the denoiser with [MASK] removed from its
# proposals (it is never a target); counts its calls and their time.
NoMaskProposals = BannedProposals


class Counted(P.Policy):
    """Wraps a policy: counts, per row, the steps in which it still had a mask, and
    the time spent choosing. A measuring wrapper made fresh for each evaluation:
    unlike the library's policies it keeps what it counts on itself."""

    def __init__(self, inner: P.Policy):
        self.inner = inner
        self.adaptive = inner.adaptive
        self.schedule = inner.schedule
        self.tempered_scores = inner.tempered_scores
        self.needs_generator = inner.needs_generator
        self.uses_quota = inner.uses_quota
        self.needs_hidden = getattr(inner, "needs_hidden", False)
        self.hidden_layer = getattr(inner, "hidden_layer", -1)  # which hidden_states entry it reads
        self.active_steps = None
        self.seconds = 0.0

    def select(self, ctx):
        t0 = time.perf_counter()
        chosen = self.inner.select(ctx)
        self.seconds += time.perf_counter() - t0
        active = ctx.eligible.any(-1).to(torch.int64)
        self.active_steps = active if self.active_steps is None else self.active_steps + active
        return chosen


class Oracle(P.Policy):
    """Reads the solution: commits the quota's count among masked cells whose
    proposal is right, most confident first (then the others, most confident first)."""

    def __init__(self, solutions: torch.Tensor, schedule=None):
        super().__init__(schedule)
        self.solutions = solutions

    def select(self, ctx):
        right = ctx.stats.token == self.solutions
        score = ctx.stats.confidence.float() + right.float() * 2.0
        return dmkernels.select_topk(score, ctx.quota, ctx.eligible, backend=ctx.backend)


@dataclass
class Entry:
    name: str
    make: Callable[[], P.Policy]
    steps: tuple  # scheduled budgets; () for adaptive


def learned_policies(checkpoints: str) -> list[tuple[str, str]]:
    """(name, path) of the shipped learned policies."""
    out = []
    if os.path.isdir(checkpoints):
        for f in sorted(os.listdir(checkpoints)):
            if f.startswith("policy_") and f.endswith(".safetensors"):
                out.append((f[len("policy_"):-len(".safetensors")], os.path.join(checkpoints, f)))
    return out


def entries(solutions: torch.Tensor, checkpoints: str, quick: bool) -> list[Entry]:
    steps = QUICK_STEPS if quick else SCHEDULED_STEPS
    out = [
        Entry("Random", P.Random, steps),
        Entry("LowConfidence", P.LowConfidence, steps),
        Entry("Margin", P.Margin, steps),
        Entry("Entropy", P.Entropy, steps),
        Entry(HAND_RULE, sudoku.SinglesFirst, steps),
        Entry("Oracle", lambda: Oracle(solutions), steps),
    ]
    gammas = (0.1, 1.0) if quick else (0.01, 0.1, 1.0)
    out += [Entry(f"EntropyBounded(gamma={g})", lambda g=g: P.EntropyBounded(g), ()) for g in gammas]
    out += [Entry(f"Dilated(base={b})", lambda b=b: P.Dilated(b), ()) for b in ((2,) if quick else (2, 3))]
    for name, path in learned_policies(checkpoints):
        # Entries are made fresh per run; the first load only tells scheduled from adaptive.
        scheduled = LearnedPolicy.load(path).selection == "topk"
        out.append(Entry(f"Learned[{name}]", lambda path=path: LearnedPolicy.load(path), steps if scheduled else ()))
    return out


@torch.no_grad()
def evaluate(model, puzzles, solutions, policy: P.Policy, steps: int | None, *, batch: int = 256,
             seed: int = 0) -> dict:
    """Solve rate, cell accuracy and model calls per puzzle of one policy at one budget."""
    net = NoMaskProposals(model, sudoku.MASK_TOKEN)
    accuracy = calls = 0.0
    policy_seconds = 0.0
    solved_each = []
    for lo in range(0, puzzles.shape[0], batch):
        canvas, solution = puzzles[lo:lo + batch], solutions[lo:lo + batch]
        if isinstance(policy, Oracle):
            policy.solutions = solution
        counted = Counted(policy)
        out = dmkernels.infill(net, canvas, steps=steps or 1, policy=counted, seed=seed,
                               mask_id=sudoku.MASK_TOKEN)
        solved_each.append(sudoku.solved(out.sequences, canvas))
        accuracy += float(sudoku.cell_accuracy(out.sequences, solution, canvas).sum())
        calls += float(counted.active_steps.sum()) if counted.active_steps is not None else 0.0
        policy_seconds += counted.seconds
    n = puzzles.shape[0]
    solved_each = torch.cat(solved_each)
    # solved: per puzzle, in held-out order (for paired comparisons between policies).
    return dict(solve_rate=float(solved_each.float().mean()), solved=solved_each.int().tolist(),
                cell_accuracy=accuracy / n, model_calls=calls / n, n_puzzles=n,
                steps=steps, model_ms_per_call=1e3 * net.seconds / max(net.calls, 1),
                policy_ms_per_call=1e3 * policy_seconds / max(net.calls, 1))


HEURISTICS = ("LowConfidence", "Margin", "Entropy")


def paired_gain(a: list, b: list, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Solve-rate gain of a over b on the same puzzles, with a paired bootstrap 95%
    interval (puzzles resampled, both policies together)."""
    a = torch.tensor(a, dtype=torch.float64)
    d = a - torch.tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d.numel(), (resamples, d.numel()), generator=g)
    means = d[idx].mean(-1).sort().values
    return float(d.mean()), float(means[int(0.025 * resamples)]), float(means[int(0.975 * resamples) - 1])


def compare_to_heuristics(records: list[dict]) -> None:
    """Adds to each learned record, and to the hand rule's, the best heuristic
    (LowConfidence, Margin, Entropy) on the same puzzle set, denoiser and budget,
    and the paired gain over it with its interval; to each learned record also
    the paired gain over the hand rule."""
    def same(h, r):
        return (h["denoiser"] == r["denoiser"] and h["steps"] == r["steps"]
                and h.get("set", "heldout") == r.get("set", "heldout"))

    for r in records:
        if not (r["policy"].startswith("Learned") or r["policy"] == HAND_RULE) or r["steps"] is None:
            continue
        rivals = [h for h in records if h["policy"] in HEURISTICS and same(h, r)]
        if rivals:
            best = max(rivals, key=lambda h: h["solve_rate"])
            gain, lo, hi = paired_gain(r["solved"], best["solved"])
            r.update(best_heuristic=best["policy"], gain_over_best_heuristic=gain, gain_ci95=[lo, hi])
        rule = [h for h in records if h["policy"] == HAND_RULE and same(h, r)]
        if r["policy"] != HAND_RULE and rule:
            gain, lo, hi = paired_gain(r["solved"], rule[0]["solved"])
            r.update(gain_over_hand_rule=gain, gain_over_hand_rule_ci95=[lo, hi])
        task = [h for h in records if h["policy"] == TASK_FEATURE_POLICY and same(h, r)]
        if r["policy"] not in (HAND_RULE, TASK_FEATURE_POLICY) and task:
            gain, lo, hi = paired_gain(r["solved"], task[0]["solved"])
            r.update(gain_over_task_features=gain, gain_over_task_features_ci95=[lo, hi])


def run(*, n_puzzles: int = 200, budgets=("short", "long"), quick: bool = False, checkpoints: str | None = None,
        dev_puzzles: int = 0, only=None, log=print) -> list[dict]:
    """Every policy on the held-out set; with ``dev_puzzles``, the long denoiser's
    scheduled policies (not Random or the oracle) on that many development puzzles too.
    ``only``: the names of the entries to run (e.g. ``"Margin"``, ``"Learned[block_grpo]"``), all when None."""
    torch.set_num_threads(1)
    checkpoints = checkpoints or str(sudoku.checkpoint_dir())
    sets = [("heldout", sudoku.heldout_puzzles(n_puzzles))]
    if dev_puzzles:
        sets.append(("dev", sudoku.dev_puzzles(dev_puzzles)))
    records = []
    for budget in budgets:
        model = sudoku.load_denoiser(budget)
        for set_name, (puzzles, solutions) in sets:
            if set_name == "dev" and budget != "long":
                continue
            for entry in entries(solutions, checkpoints, quick):
                if only is not None and entry.name not in only:
                    continue
                # Learned policies were trained on the long-budget denoiser.
                if entry.name.startswith("Learned") and budget != "long":
                    continue
                if set_name == "dev" and (not entry.steps or entry.name in ("Random", "Oracle")):
                    continue
                for steps in entry.steps or (None,):
                    r = dict(policy=entry.name, denoiser=budget, givens=24, set=set_name,
                             **evaluate(model, puzzles, solutions, entry.make(), steps))
                    records.append(r)
                    log(f"{budget:>5} {set_name:>7}  {entry.name:<34} steps {str(steps or '-'):>4}  "
                        f"calls {r['model_calls']:5.1f}  solved {100 * r['solve_rate']:5.1f}%  "
                        f"cells {100 * r['cell_accuracy']:5.1f}%  policy {r['policy_ms_per_call']:.2f} ms / model "
                        f"{r['model_ms_per_call']:.2f} ms per call")
    compare_to_heuristics(records)
    for r in records:
        where = f"{r['denoiser']:>5} {r.get('set', 'heldout'):>7}  {r['policy']:<34} steps {str(r['steps']):>4}"
        if "gain_over_best_heuristic" in r:
            lo, hi = r["gain_ci95"]
            log(f"{where}  gain over {r['best_heuristic']}: {100 * r['gain_over_best_heuristic']:+.1f} points "
                f"(95% paired bootstrap {100 * lo:+.1f} to {100 * hi:+.1f})")
        if "gain_over_hand_rule" in r:
            lo, hi = r["gain_over_hand_rule_ci95"]
            log(f"{where}  gain over the hand rule: {100 * r['gain_over_hand_rule']:+.1f} points "
                f"(95% paired bootstrap {100 * lo:+.1f} to {100 * hi:+.1f})")
        if "gain_over_task_features" in r:
            lo, hi = r["gain_over_task_features_ci95"]
            log(f"{where}  gain over {TASK_FEATURE_POLICY}: {100 * r['gain_over_task_features']:+.1f} points "
                f"(95% paired bootstrap {100 * lo:+.1f} to {100 * hi:+.1f})")
    return records


@torch.no_grad()
def policy_cost(log=print) -> list[dict]:
    """Time a learned policy's choice against the model call at LLaDA's vocabulary
    (``llada_like_config``: V = 126464, a small body), B = 1, prompt 32, gen 256,
    block 32, 64 steps; LowConfidence alongside. CPU, 1 thread."""
    from dmkernels.learned import BlockScorer, MLPScorer, TransformerScorer
    from dmkernels.models import DiffusionLM, llada_like_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DiffusionLM(llada_like_config()).eval()
    prompt = torch.randint(0, 126000, (1, 32))
    records = []
    for name, make in (("LowConfidence", P.LowConfidence),
                       ("Learned[mlp]", lambda: LearnedPolicy(MLPScorer())),
                       ("Learned[transformer]", lambda: LearnedPolicy(TransformerScorer())),
                       # a copy of the model's last block on the hidden state entering it
                       ("Learned[block]", lambda: LearnedPolicy(BlockScorer.from_model(model)))):
        net = NoMaskProposals(model, LLADA_MASK_ID)
        counted = Counted(make())
        t0 = time.perf_counter()
        dmkernels.generate(net, prompt, gen_length=256, block_length=32, steps=64, policy=counted, seed=0)
        total = time.perf_counter() - t0
        r = dict(policy=name, shape="B=1, prompt 32, gen 256, block 32, V=126464", steps=64,
                 model_ms_per_call=1e3 * net.seconds / net.calls, policy_ms_per_call=1e3 * counted.seconds / net.calls,
                 total_ms=1e3 * total)
        r["policy_fraction_of_model"] = r["policy_ms_per_call"] / r["model_ms_per_call"]
        records.append(r)
        log(f"cost  {name:<22} policy {r['policy_ms_per_call']:.3f} ms per step, model {r['model_ms_per_call']:.1f} ms "
            f"per call ({100 * r['policy_fraction_of_model']:.2f}%)")
    return records


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    # One colour per policy, the same in both panels (more policies than tab10 has colours).
    names = list(dict.fromkeys(r["policy"].split("(")[0] for r in records))
    palette = list(plt.cm.tab10.colors) + ["black", "darkgoldenrod", "slategray", "lime", "navy"]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for ax, budget in zip(axes, ("short", "long")):
        rows = [r for r in records if r["denoiser"] == budget and r.get("set", "heldout") == "heldout"]
        for name in dict.fromkeys(r["policy"].split("(")[0] for r in rows):
            pts = sorted((r["model_calls"], 100 * r["solve_rate"]) for r in rows if r["policy"].split("(")[0] == name)
            style = "--" if name == "Oracle" else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name.strip(),
                    color=colour[name])
        ax.set_title(f"denoiser: {budget} training budget")
        ax.set_xlabel("model calls per puzzle")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("puzzles solved (%)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the lines stay visible
    fig.suptitle("Sudoku (24 givens, held-out set): solve rate against model calls, greedy tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(args) -> int:
    n = args.puzzles or (24 if args.quick else 200)
    # The development set only in the full run (it adds a few minutes).
    records = run(n_puzzles=n, quick=args.quick, dev_puzzles=0 if args.quick else DEV_PUZZLES)
    cost = None if args.no_cost else policy_cost()
    out_dir = args.out_dir
    os.makedirs(out_dir, exist_ok=True)
    json_path = args.json or os.path.join(out_dir, "sudoku_quality.json")
    with open(json_path, "w") as f:  # one record per line: the per-puzzle lists stay compact
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    print(f"wrote {json_path}")
    if cost is not None:
        cost_path = os.path.join(out_dir, "learned_policy_cost_cpu.json")
        with open(cost_path, "w") as f:
            json.dump(cost, f, indent=1)
        print(f"wrote {cost_path}")
    try:
        plot(records, os.path.join(out_dir, "sudoku_quality.png"))
        print(f"wrote {os.path.join(out_dir, 'sudoku_quality.png')}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return 0
