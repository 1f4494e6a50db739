"""Worker processes of tests/test_distributed.py (a module of its own so that
torch.multiprocessing's spawned children can import it).

Every rank builds the same data and model from fixed seeds, runs the sharded
(or data-parallel) path, computes the single-process result itself, and raises
on any difference; the parent sees the exception.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

import dmkernels
from dmkernels import distributed as D
from dmkernels import ops
from dmkernels import policies as P
from dmkernels.models import DiffusionLM, tiny_config
from dmkernels.testing import forbid_host_sync

V = 301  # odd: the slices are uneven
MASK, EOS = V - 1, V - 2


def cuts(world: int, V: int) -> list[int]:
    """Uneven slice bounds: rank k gets [cuts[k], cuts[k + 1])."""
    # Cuts on noise-group edges (multiples of 32): sampling needs whole groups.
    if world == 2:
        return [0, 128, V]
    if world == 3:
        return [0, 64, 96, V]  # a 32-column slice
    step = V // world // 32 * 32
    return [k * step for k in range(world)] + [V]


def _assert_same_stats(got, want, what):
    if not torch.equal(got.token, want.token):
        raise AssertionError(f"{what}: tokens differ\n{got.token}\n{want.token}")
    for name, a, b in zip(("confidence", "margin", "entropy"), got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, equal_nan=True, msg=f"{what}: {name}")


def op_cases(rank: int, world: int):
    bounds = cuts(world, V)
    a, b = bounds[rank], bounds[rank + 1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, V, generator=g) * 3
    rows = x.view(-1, V)
    for k, cut in enumerate(bounds[1:-1]):
        rows[k, cut - 1] = rows[k, cut] = 50.0  # tie straddling a cut: the lower global id wins
    rows[5, :bounds[1]] = float("-inf")          # rank 0's slice is all -inf
    rows[6, bounds[1]:] = float("-inf")          # every other slice is all -inf
    rows[7] = float("-inf")
    rows[8, V - 1] = float("nan")
    rows[9, 0] = float("inf")
    positions = torch.rand(4, 6, generator=g) < 0.8
    positions.view(-1)[:10] = True
    for backend in ("native", "reference") if dmkernels.backends()["cpu"] == "available" else ("reference",):
        for temperature, tempered in ((0.0, False), (0.9, False), (0.9, True)):
            for pos in (None, positions):
                kw = dict(temperature=temperature, seed=7, offset=2, positions=pos, tempered_scores=tempered,
                          backend=backend)
                got = D.token_stats(x[..., a:b], vocab_start=a, **kw)
                want = ops.token_stats(x, **kw)
                _assert_same_stats(got, want, f"rank {rank} {backend} T={temperature} tempered={tempered}")
    # The bf16 logits of a real model.
    xb = x.to(torch.bfloat16)
    got = D.token_stats(xb[..., a:b], vocab_start=a, temperature=0.5, seed=3)
    _assert_same_stats(got, ops.token_stats(xb, temperature=0.5, seed=3), f"rank {rank} bf16")


class VocabShard(torch.nn.Module):
    """A stand-in for a tensor-parallel model: returns this rank's vocabulary slice."""

    def __init__(self, model, start, end):
        super().__init__()
        self.model, self.start, self.end = model, start, end
        self.config = model.config

    def forward(self, x, **kwargs):
        return self.model(x, **kwargs).logits[..., self.start:self.end]


def _model():
    torch.manual_seed(0)
    return DiffusionLM(tiny_config(vocab_size=V, logit_std=6.0)).eval()


def _prompts(B, P_len=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, EOS, (B, P_len), generator=g)


SAMPLER_CASES = [
    dict(policy=P.LowConfidence(), temperature=0.0, steps=8),
    dict(policy=P.LowConfidence(), temperature=0.9, steps=8),
    dict(policy=P.Margin(tempered_scores=True), temperature=0.7, steps=4),
    dict(policy=P.Random(), temperature=0.9, steps=8),
    dict(policy=P.Threshold(0.2), temperature=0.0, steps=None),
    dict(policy=P.EntropyBounded(1.0), temperature=0.8, steps=None),
    dict(policy=P.LowConfidence(), temperature=0.0, steps=8, eos_token_id=EOS),
    dict(policy=P.LowConfidence(), temperature=0.0, steps=8, cfg_scale=1.5),
]


def vocab_parallel_cases(rank: int, world: int):
    bounds = cuts(world, V)
    model = _model()
    shard = VocabShard(model, bounds[rank], bounds[rank + 1])
    x = _prompts(3)
    for case in SAMPLER_CASES:
        kw = dict(gen_length=8, block_length=4, seed=11, **case)
        want = dmkernels.generate(model, x, **kw)
        with forbid_host_sync():
            got = dmkernels.generate(shard, x, parallel=D.VocabParallel(bounds[rank]), **kw)
        if not torch.equal(got.sequences, want.sequences) or got.model_calls != want.model_calls:
            raise AssertionError(f"rank {rank} vocab parallel {case}:\n{got}\n{want}")


def data_parallel_cases(rank: int, world: int):
    model = _model()
    B = 2 * world + 1  # uneven: the first worker holds one more row
    x = _prompts(B, seed=2)
    sizes = [B // world + (1 if k < B % world else 0) for k in range(world)]
    lo = sum(sizes[:rank])
    mine = x[lo:lo + sizes[rank]]
    for case in SAMPLER_CASES:
        if case["policy"].needs_generator:
            continue  # its own stream per worker: not comparable with one process
        kw = dict(gen_length=8, block_length=4, seed=5, **case)
        want = dmkernels.generate(model, x, **kw)
        got = dmkernels.generate(model, mine, parallel=D.DataParallel(), **kw)
        if not torch.equal(got.sequences, want.sequences[lo:lo + sizes[rank]]):
            raise AssertionError(f"rank {rank} data parallel {case}:\n{got.sequences}\n{want.sequences}")
        if got.model_calls != want.model_calls:  # lockstep: every worker runs the whole batch's calls
            raise AssertionError(f"rank {rank} data parallel {case}: {got.model_calls} != {want.model_calls}")
    # Without lockstep each worker stops on its own: never more calls than in lockstep.
    kw = dict(gen_length=8, block_length=4, seed=5, policy=P.Threshold(0.2), temperature=0.0, steps=None)
    free = dmkernels.generate(model, mine, parallel=D.DataParallel(lockstep=False), **kw)
    locked = dmkernels.generate(model, mine, parallel=D.DataParallel(), **kw)
    if free.model_calls > locked.model_calls or not torch.equal(free.sequences, locked.sequences):
        raise AssertionError(f"rank {rank}: lockstep=False {free.model_calls} vs {locked.model_calls}")


def measure_bytes(rank: int, world: int):
    """Check the gathered partials have the size bytes_per_step claims."""
    rows, Vl = 32, 1000
    partial = ops.token_stats_partial(torch.randn(rows, Vl), vocab_start=rank * Vl)
    gathered = D.gather_partials(partial)
    received = (gathered.numel() - partial.numel()) * gathered.element_size()
    claim = D.bytes_per_step(rows, Vl * world, world)["partials"]
    if received != claim:
        raise AssertionError(f"received {received} bytes, bytes_per_step says {claim}")


CASES = {"ops": op_cases, "vocab_parallel": vocab_parallel_cases, "data_parallel": data_parallel_cases,
         "bytes": measure_bytes}


def worker(rank: int, world: int, init_file: str, names: list[str]):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name in names:
            CASES[name](rank, world)
    finally:
        dist.destroy_process_group()
