"""Train the Sudoku denoiser shipped with dmkernels, and sanity-check it.

    python benchmarks/sudoku/train_denoiser.py --steps 2000 --name long     # train, write dmkernels/tasks/checkpoints/sudoku_long.*
    python benchmarks/sudoku/train_denoiser.py --eval short long            # greedy sanity check of committed checkpoints

Model: ``dmkernels.models.DiffusionLM`` with ``dmkernels.tasks.sudoku.sudoku_config()``
(bidirectional, vocabulary = 9 digit tokens + MASK). Recipe, the standard
masked-diffusion loss on complete solution grids:

- data: a pool of ``--pool`` grids from ``sudoku.generate_grids(pool, seed)``
  (randomised backtracking; the held-out puzzles are a different seeded
  stream), each batch drawn from the pool and passed through a random
  validity-preserving symmetry (``sudoku.augment``: digit relabelling,
  row/column permutations within bands, band permutations, transpose), so
  the model practically never sees the same grid twice;
- noise: per grid ``t ~ U(0, 1)``, each cell masked independently with
  probability ``t`` (at least one cell per grid);
- loss: cross-entropy on the masked cells, averaged over all masked cells of
  the batch, **not** weighted by ``1/t`` (``--weighting inv_t`` gives the
  MDLM ELBO weighting instead, sum of CE / t over cells / (B * 81); the
  unweighted mean has lower variance and trained better here);
- AdamW, linear warm-up then cosine decay to 10 %, gradient clipping at 1.0.

Everything is seeded (``--seed``) and runs on one CPU thread, so a run is
deterministic on a given machine and PyTorch build. The checkpoint is the
fp16 state dict (safetensors) plus a JSON file with the config and the
training record (command, seed, steps, wall time, final loss).

``--eval`` fills the masks of the held-out puzzles (``sudoku.heldout_puzzles``)
one position per model call with ``sudoku.greedy_fill``: a random masked
position, the most confident one, or an oracle that knows the solution, and
reports solve rate and cell accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dmkernels.models import DiffusionLM
from dmkernels.tasks import sudoku

CHECKPOINTS = sudoku.checkpoint_dir()  # the shipped ones: package data
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "rope_theta", "rms_norm_eps", "mask_token_id", "logit_std",
    "position_embedding",
)


def masked_diffusion_loss(model, grids: torch.Tensor, gen: torch.Generator, weighting: str = "none"):
    """The masked-diffusion loss of complete grids (tokens ``[B, 81]``)."""
    b, n = grids.shape
    t = torch.rand(b, 1, generator=gen)
    mask = torch.rand(b, n, generator=gen) < t
    # At least one masked cell per grid: force a random cell where none was drawn.
    forced = torch.randint(0, n, (b,), generator=gen)
    mask[torch.arange(b), forced] |= ~mask.any(-1)
    x = grids.masked_fill(mask, sudoku.MASK_TOKEN)
    logits = model(x).logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), grids.reshape(-1), reduction="none").view(b, n)
    if weighting == "inv_t":
        return (ce * mask / t.clamp_min(1.0 / n)).sum() / (b * n)
    return (ce * mask).sum() / mask.sum()


def init_positions_factorized(model, gen: torch.Generator) -> None:
    """Start the learned position embedding of cell (r, c) in box b at
    ``R[r] + C[c] + B[b]`` (random vectors, total variance 1 like the token
    embeddings), so cells that share a unit start with similar embeddings and
    attention can find "same row / column / box" from the first step. Only
    the initial value: the embedding is then trained freely."""
    d = model.config.hidden_size
    rows, cols, boxes = (torch.randn(9, d, generator=gen) / math.sqrt(3) for _ in range(3))
    cell = torch.arange(sudoku.NUM_CELLS)
    r, c = cell // 9, cell % 9
    with torch.no_grad():
        model.embed_positions.weight.copy_(rows[r] + cols[c] + boxes[(r // 3) * 3 + c // 3])


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = sudoku.sudoku_config(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate, position_embedding=args.position_embedding,
    )
    model = DiffusionLM(config).train()
    if args.pe_init == "factorized" and model.embed_positions is not None:
        init_positions_factorized(model, gen)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    print(f"model: {n_params} parameters, config {json.dumps({k: getattr(config, k) for k in CONFIG_FIELDS})}", flush=True)

    start = time.perf_counter()
    pool = sudoku.generate_grids(args.pool, seed=args.seed)
    print(f"pool of {args.pool} grids in {time.perf_counter() - start:.1f} s", flush=True)

    running = None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, args.pool, (args.batch_size,), generator=gen)
        grids = sudoku.augment(pool[idx], gen)
        loss = masked_diffusion_loss(model, grids, gen, args.weighting)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1:5d}  loss {running:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.perf_counter() - start:7.1f} s", flush=True)
    wall = time.perf_counter() - start
    print(f"trained {args.steps} steps in {wall:.1f} s ({wall / 60:.1f} min)", flush=True)

    out = Path(args.out_dir) / f"sudoku_{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, str(out))
    record = {
        "config": {k: getattr(config, k) for k in CONFIG_FIELDS},
        "training": {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "warmup": args.warmup, "weight_decay": args.weight_decay, "weighting": args.weighting,
            "pool": args.pool, "pe_init": args.pe_init, "threads": args.threads, "parameters": n_params,
            "wall_time_s": round(wall, 1), "final_loss_ema": round(running, 4),
            "torch": torch.__version__, "storage_dtype": "float16",
        },
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json').name}", flush=True)
    if args.eval_after:
        evaluate([str(out)], args)


def evaluate(names, args) -> None:
    torch.set_num_threads(args.threads)
    puzzles, solutions = sudoku.heldout_puzzles(args.eval_n, givens=args.givens)
    for name in names:
        if name.endswith(".safetensors"):
            model = sudoku.load_denoiser(path=name)
        else:
            model = sudoku.load_denoiser(name, path=args.out_dir)
        for order in ("random", "confidence", "oracle"):
            start = time.perf_counter()
            filled, calls = sudoku.greedy_fill(model, puzzles, order, solutions=solutions, seed=args.seed)
            solve = sudoku.solved(filled, puzzles).float().mean().item()
            acc = sudoku.cell_accuracy(filled, solutions, puzzles).mean().item()
            print(f"{name:>10} {order:>10}: solve rate {100 * solve:5.1f}%  cell accuracy {100 * acc:5.1f}%  "
                  f"({args.eval_n} puzzles, {args.givens} givens, {calls} model calls, "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", nargs="+", metavar="NAME", help="evaluate checkpoints (short, long, or .safetensors paths) instead of training")
    p.add_argument("--name", default="long", help="checkpoint name: writes sudoku_<name>.safetensors/.json")
    p.add_argument("--out-dir", default=str(CHECKPOINTS))
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (the training budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--weighting", choices=("none", "inv_t"), default="none")
    p.add_argument("--pool", type=int, default=10000, help="distinct base grids (each batch is augmented)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=128)
    p.add_argument("--position-embedding", choices=("rope", "rope+learned"), default="rope+learned")
    p.add_argument("--pe-init", choices=("random", "factorized"), default="factorized",
                   help="initial value of the learned position embedding")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-after", action="store_true", help="run the sanity check after training")
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--givens", type=int, default=24)
    args = p.parse_args(argv)
    if args.eval:
        evaluate(args.eval, args)
    else:
        train(args)


if __name__ == "__main__":
    main()
