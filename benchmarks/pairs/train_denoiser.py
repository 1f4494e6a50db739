"""Train the Pairs denoiser shipped with dmkernels (dmkernels/tasks/pairs.py).

    python benchmarks/pairs/train_denoiser.py --steps 2000 --seed 0   # writes dmkernels/tasks/checkpoints/pairs_denoiser.*

Model: ``dmkernels.models.DiffusionLM`` with ``pairs.pairs_config()``. Data:
fresh examples every batch from the training stream (``pairs.TRAIN_SEED``
plus the seed), never the held-out or development streams. Loss: the
masked-diffusion loss on the generation only (the prompt is never masked, as
in ``dmkernels.generate``): per sequence ``t ~ U(0, 1)``, each generation
position masked with probability ``t`` (at least one), cross-entropy on the
masked positions averaged over the batch's masked positions. AdamW, warm-up
then cosine decay to 10 %, clipping at 1.0, one CPU thread, seeded.

After training it reports, on 1000 development examples, the generation's
right rate when filled one position per call by confidence (16 calls: the
denoiser's own quality, order hardly matters) and at 4 calls by LowConfidence,
tokens sampled at ``pairs.TEMPERATURE``.
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

import dmkernels
from dmkernels.models import DiffusionLM
from dmkernels.policies import LowConfidence
from dmkernels.tasks import pairs

CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "rope_theta", "rms_norm_eps", "mask_token_id", "logit_std",
                 "position_embedding")


def loss_fn(model, prompts, answers, gen):
    b, n = answers.shape
    t = torch.rand(b, 1, generator=gen)
    mask = torch.rand(b, n, generator=gen) < t
    forced = torch.randint(0, n, (b,), generator=gen)
    mask[torch.arange(b), forced] |= ~mask.any(-1)
    x = torch.cat([prompts, answers.masked_fill(mask, pairs.MASK_TOKEN)], dim=1)
    logits = model(x).logits[:, pairs.PROMPT_LENGTH:].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none").view(b, n)
    return (ce * mask).sum() / mask.sum()


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def check_quality(model, n=1000):
    prompts, _ = pairs.dev_set(n)
    net = pairs.AnswerProposals(model)
    out = {}
    for steps in (16, 4):
        seq = dmkernels.generate(net, prompts, gen_length=pairs.GEN_LENGTH, block_length=pairs.GEN_LENGTH,
                                 steps=steps, policy=LowConfidence(), temperature=pairs.TEMPERATURE,
                                 seed=0).sequences
        out[steps] = float(pairs.correct(seq, prompts).float().mean())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--out", default=str(pairs.checkpoint_dir() / "pairs_denoiser.safetensors"))
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = pairs.pairs_config(hidden_size=args.hidden, num_hidden_layers=args.layers,
                                intermediate_size=2 * args.hidden)
    model = DiffusionLM(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    print(f"model: {n_params} parameters", flush=True)
    start, cpu0 = time.perf_counter(), time.process_time()
    running = None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        # A fresh batch from the training stream: seed + step, never the test or development streams.
        prompts, answers = pairs.generate(args.batch_size, pairs.TRAIN_SEED + 1_000_003 * args.seed + 7 * step)
        loss = loss_fn(model, prompts, answers, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1:5d}  loss {running:.4f}  {time.perf_counter() - start:7.1f} s", flush=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    model.eval()
    quality = check_quality(model)
    print(f"trained in {wall:.1f} s wall, {cpu:.1f} s CPU; development set right: 16 calls "
          f"{100 * quality[16]:.1f}%, 4 calls (LowConfidence) {100 * quality[4]:.1f}%", flush=True)

    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(out))
    meta = dict(config={k: getattr(config, k) for k in CONFIG_FIELDS},
                training=dict(command="python " + " ".join(shlex.quote(a) for a in sys.argv), seed=args.seed,
                              steps=args.steps, batch_size=args.batch_size, lr=args.lr, parameters=n_params,
                              final_loss=running, wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1),
                              torch=torch.__version__, threads=1,
                              dev_right_lowconfidence={"16": quality[16], "4": quality[4]}))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
