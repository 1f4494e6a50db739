"""dmkernels past one process: vocabulary-parallel statistics and data-parallel sampling.

Tensor parallelism. A tensor-parallel LM head leaves rank k with the logits of
its vocabulary slice ``[vocab_start_k, vocab_start_k + V_k)``. Gathering the full
``[B, L, V]`` logits to score positions moves a copy the size of the logits per
step; :func:`token_stats` instead reduces each slice to eight floats per position
(``dmkernels.token_stats_partial``), gathers those (one collective of
``8 * 4 * rows`` bytes per rank) and merges them into exactly what
``dmkernels.token_stats`` gives on the whole rows: the same token for the same
seed (the noise of a column is that of its global index, so the draw does not
depend on the number of ranks or where the vocabulary is cut), scores within
float32 rounding. Every rank gets the same statistics, so ranks that run
``dmkernels.generate(..., parallel=VocabParallel(...))`` make the same decisions.

Data parallelism. ``generate(..., parallel=DataParallel())`` on each worker's own
rows draws each row's token noise as row ``row_offset + r`` of one global batch,
so a worker's tokens do not depend on how the batch was split; ``lockstep``
makes every worker run the same number of model calls (for models whose forward
is itself collective, e.g. FSDP).

Why a gather and not an all-reduce: merging needs a max (of m), sums rescaled by
that max and a lexicographic (value, lowest column) argmax; no single reduce op
does all three, and two or three all-reduces cost more latency than one gather of
eight floats per rank, which is also half the bytes of an all-reduce of the
same W x 8 floats.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import ops
from .reference.token_stats_partial import NUM_FIELDS, merge_token_stats_partials

__all__ = ["DataParallel", "VocabParallel", "all_done", "all_gather_flat", "bytes_per_step", "gather_partials", "merge_partials",
           "row_offset_of", "token_stats"]


def merge_partials(partials: torch.Tensor, positions: torch.Tensor | None = None) -> ops.TokenStats:
    """TokenStats from the partials [W, ..., 8] of W slices that tile the vocabulary
    (``dmkernels.token_stats_partial``); any slice order. Small tensors, no host sync."""
    return merge_token_stats_partials(partials, positions)


def _world(group) -> int:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("dmkernels.distributed: torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    return dist.get_world_size(group)


def all_gather_flat(out: torch.Tensor, tensor: torch.Tensor, group=None) -> None:
    """All-gather ``tensor`` (any shape, contiguous) into the flat ``out`` of W
    times its size, in rank order; gloo wants flat buffers here."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, tensor.reshape(-1), group=group)


def gather_partials(partial: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' partials [W, ..., 8], rank order, by one all-gather over ``group``."""
    W = _world(group)
    partial = partial.contiguous()
    if W == 1:
        return partial.unsqueeze(0)
    out = partial.new_empty(W * partial.numel())
    all_gather_flat(out, partial, group)
    return out.view(W, *partial.shape)


def token_stats(
    local_logits: torch.Tensor,
    *,
    vocab_start: int,
    group=None,
    temperature: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    tempered_scores: bool = False,
    rng: torch.Tensor | None = None,
    row_offset: int = 0,
    backend: str | None = None,
) -> ops.TokenStats:
    """``dmkernels.token_stats`` of logits whose vocabulary is split over ``group``.

    Every rank calls it with its slice ``local_logits`` [..., V_k] holding columns
    ``[vocab_start, vocab_start + V_k)`` (slices may be uneven but must tile the
    vocabulary; the leading dims and every other argument must agree across
    ranks). Returns the statistics of the whole rows on every rank: tokens are
    global ids. ``seed`` is required when sampling (T > 0), because each rank
    drawing its own would desynchronise them. ``row_offset`` shifts the rows'
    noise (see ``dmkernels.token_stats_partial``).
    """
    if temperature > 0 and seed is None and rng is None:
        raise ValueError("dmkernels.distributed.token_stats: seed must be given when temperature > 0 "
                         "(every rank must draw the same noise)")
    partial = ops.token_stats_partial(
        local_logits, vocab_start=vocab_start, row_offset=row_offset, temperature=temperature,
        seed=seed, offset=offset, positions=positions, tempered_scores=tempered_scores, rng=rng,
        backend=backend)
    return merge_partials(gather_partials(partial, group), positions)


def row_offset_of(batch_size: int, group=None) -> tuple[int, int]:
    """(rows held by the lower ranks, this rank) over ``group``: one all-gather of
    the batch sizes, read on the host once, before generation starts."""
    W = _world(group)
    rank = dist.get_rank(group)
    device = _collective_device(group)
    sizes = torch.zeros(W, dtype=torch.int64, device=device)
    all_gather_flat(sizes, torch.tensor([batch_size], dtype=torch.int64, device=device), group)
    return int(sizes[:rank].sum()), rank


def all_done(done: torch.Tensor, group=None) -> torch.Tensor:
    """``done`` (a bool scalar) and-ed over ``group``: one all-reduce (MIN) of one int,
    enqueued like any collective, so no host sync."""
    flag = done.to(torch.int32).reshape(1).to(_collective_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return flag.to(done.device).reshape(()).bool()


def _collective_device(group) -> torch.device:
    """Where the backend wants small tensors: the current GPU under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def bytes_per_step(rows: int, vocab_size: int, world_size: int, logits_bytes: int = 2) -> dict[str, int]:
    """Bytes each rank receives per token_stats call: gathering the partials against
    gathering the logits (all_gather of each rank's [rows, V / W] slice)."""
    W = world_size
    return {
        "partials": (W - 1) * rows * NUM_FIELDS * 4,
        "logits": (W - 1) * rows * (vocab_size // W) * logits_bytes,
    }


@dataclass(frozen=True)
class VocabParallel:
    """The model returns this rank's vocabulary slice of the logits.

    ``vocab_start`` is the global id of the slice's first column. Pass as
    ``generate(..., parallel=VocabParallel(vocab_start, group))``; every rank of
    ``group`` runs the same call with the same ``seed`` and gets the same tokens.
    """

    vocab_start: int
    group: object = None


@dataclass(frozen=True)
class DataParallel:
    """Each worker of ``group`` generates its own rows (its own ``input_ids``).

    The token noise of row r of worker k is that of row ``sum(batch of workers < k)
    + r`` of one global batch, so with the same ``seed`` a worker's rows get the
    tokens a single process gets for them in the whole batch (policies that draw
    from ``ctx.generator``, e.g. Random, seed it with ``seed`` + rank instead).
    ``lockstep=True`` keeps every worker at the same model calls: a block ends,
    and generation stops at EOS, only when it does on every worker.
    """

    group: object = None
    lockstep: bool = True
