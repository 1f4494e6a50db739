"""The quality benchmark restricted to the generic block policy and its rivals:

    python benchmarks/sudoku/evaluate_block.py [--policy Learned[block_grpo] Learned[block_embed_supervised] ...] \
        [--out benchmarks/results/sudoku_quality_block.json]

Runs, in one run on the long denoiser, LowConfidence, Margin, Entropy, the hand
rule SinglesFirst, the task-feature policy ``Learned[mlp_constraints_grpo]``
and the block policies (:class:`dmkernels.learned.BlockScorer`; ``block_embed_supervised``
also reads the proposed tokens' embeddings, ``block2_embed_supervised`` copies the last
two blocks as well) on the 200
held-out puzzles and the 500 development puzzles at 10, 20 and 57 calls
(``dmkernels.bench.quality.run`` with ``only=``), with the paired-bootstrap
gains over the best heuristic, the hand rule and the task-feature policy; then
the policies' cost per step against the model call (``quality.policy_cost``).
The full benchmark (``python -m dmkernels.bench quality``) runs every policy.
"""
from __future__ import annotations

import argparse
import json
import time

from dmkernels.bench import quality


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", nargs="*", default=["Learned[block_grpo]", "Learned[block_embed_supervised]",
                                                   "Learned[block2_embed_supervised]"],
                    help="the block policies' entry names")
    ap.add_argument("--puzzles", type=int, default=200)
    ap.add_argument("--dev-puzzles", type=int, default=quality.DEV_PUZZLES)
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/sudoku_quality_block.json")
    args = ap.parse_args(argv)
    only = ["LowConfidence", "Margin", "Entropy", quality.HAND_RULE, quality.TASK_FEATURE_POLICY, *args.policy]
    t0 = time.time()
    records = quality.run(n_puzzles=args.puzzles, budgets=("long",), dev_puzzles=args.dev_puzzles, only=only)
    print(f"quality: {time.time() - t0:.0f} s", flush=True)
    cost = [] if args.no_cost else quality.policy_cost()
    with open(args.out, "w") as f:  # one record per line, as sudoku_quality.json
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records + [dict(cost=c) for c in cost]) + "\n]\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
