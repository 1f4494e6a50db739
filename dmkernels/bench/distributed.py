"""Vocabulary-parallel token_stats against gathering the logits, over gloo.

``python -m dmkernels.bench --distributed`` spawns W = 2, 4, 8 CPU processes. Each
rank holds its slice of bf16 logits [rows, V / W] at LLaDA's vocabulary
(V = 126464), and every rank needs the statistics of the whole rows. Two ways:

  sharded   dmkernels.distributed.token_stats: the partial kernel on the slice,
            one all-gather of 8 float32 per row and rank, the merge;
  gather    all-gather the logits slices (what a TP model does before sampling)
            and run dmkernels.token_stats on the whole rows.

Reported per W and row count: bytes each rank receives (counted from the
tensors actually exchanged) and the median time of each way, with their ratios,
and a check that both give the same tokens. The processes share this machine's
cores, so the times describe gloo on one host, not a network.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmkernels.constants import LLADA_VOCAB_SIZE

VOCAB = LLADA_VOCAB_SIZE


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _worker(rank: int, world: int, init_file: str, rows_list: list[int], repeats: int, out_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from dmkernels import distributed as D
    from dmkernels import ops

    records = []
    try:
        width = -(-VOCAB // (32 * world)) * 32  # ceil, whole noise groups: the last slice is shorter
        start, end = rank * width, min(VOCAB, (rank + 1) * width)
        for rows in rows_list:
            g = torch.Generator().manual_seed(rows)
            full = (torch.randn(rows, VOCAB, generator=g) * 4).to(torch.bfloat16)
            local = full[:, start:end].contiguous()
            kw = dict(temperature=0.7, seed=1, offset=0)

            def sharded():
                return D.token_stats(local, vocab_start=start, **kw)

            padded = torch.full((rows, width), float("-inf"), dtype=torch.bfloat16)
            padded[:, :end - start] = local
            gathered = torch.empty(world * rows * width, dtype=torch.bfloat16)

            def gather():
                D.all_gather_flat(gathered, padded)
                whole = gathered.view(world, rows, width).permute(1, 0, 2).reshape(rows, world * width)[:, :VOCAB]
                return ops.token_stats(whole, **kw)

            same = torch.equal(sharded().token, gather().token) and torch.equal(
                sharded().token, ops.token_stats(full, **kw).token)
            t_sharded = _median_s(sharded, repeats)
            t_gather = _median_s(gather, repeats)
            partial_bytes = (world - 1) * rows * 8 * 4
            logits_bytes = (world - 1) * rows * width * 2
            records.append(dict(
                op="distributed.token_stats", backend="gloo", world_size=world, rows=rows, vocab=VOCAB,
                dtype="bfloat16", temperature=0.7,
                bytes_received_sharded=partial_bytes, bytes_received_gather=logits_bytes,
                bytes_ratio=logits_bytes / partial_bytes,
                median_us=t_sharded * 1e6, baseline="all_gather logits + token_stats",
                baseline_median_us=t_gather * 1e6, ratio=t_gather / t_sharded, repeats=repeats,
                check="ok" if same else "tokens differ"))
        if rank == 0:
            torch.save(records, out_file)
    finally:
        dist.destroy_process_group()


def run(worlds=(2, 4, 8), rows_list=(32, 256), repeats: int = 15) -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            out = os.path.join(tmp, f"w{world}.pt")
            mp.spawn(_worker, args=(world, os.path.join(tmp, f"store{world}"), list(rows_list), repeats, out),
                     nprocs=world, join=True)
            records += torch.load(out)
    return records


def run_cli(meta: dict, quick: bool = False) -> list[dict]:
    worlds, rows_list, repeats = ((2,), (32,), 3) if quick else ((2, 4, 8), (32, 256), 15)
    print(f"\nvocabulary-parallel token_stats over gloo ({os.cpu_count()} cores shared by all ranks), "
          f"bf16 logits, V = {VOCAB}, T = 0.7; bytes = what each rank receives per call")
    print(f"{'W':>3} {'rows':>5} {'sharded KB':>11} {'gather KB':>11} {'bytes x':>8} "
          f"{'sharded ms':>11} {'gather ms':>10} {'time x':>7}  check")
    records = run(worlds, rows_list, repeats)
    for r in records:
        r.update(meta)
        print(f"{r['world_size']:>3} {r['rows']:>5} {r['bytes_received_sharded'] / 1e3:>11.1f} "
              f"{r['bytes_received_gather'] / 1e3:>11.1f} {r['bytes_ratio']:>7.0f}x "
              f"{r['median_us'] / 1e3:>11.2f} {r['baseline_median_us'] / 1e3:>10.2f} {r['ratio']:>6.1f}x  "
              f"{r['check']}", flush=True)
    return records
