"""dmkernels past one process: vocabulary-parallel statistics and data-parallel sampling.

Tensor parallelism. A tensor-parallel LM head leaves rank k with the logits of
its vocabulary slice ``[vocab_start_k, vocab_start_k + V_k)``. Gathering the full
``[B, L, V]`` logits to score positions moves a copy the size of the logits per
step; :func:`token_stats` instead reduces each slice to eight floats per position
(``dmkernels.token_stats_partial``), gathers those (one collective of
``8 * 4 * rows`` bytes per rank) and merges them into exactly what
``dmkernels.token_stats`` gives on the whole rows: the same token for the same
seed (the noise of a column, and of a group of 32 columns, is that of its
global index, so the draw does not depend on the number of ranks or where the
vocabulary is cut; when sampling, cuts fall on multiples of 32), scores within
float32 rounding. Every rank gets the same statistics, so ranks that run
``dmkernels.generate(..., parallel=VocabParallel(...))`` make the same decisions.

Data parallelism. ``generate(..., parallel=DataParallel())`` on each worker's own
rows draws each row's token noise as row ``row_offset + r`` of one global batch,
so a worker's tokens do not depend on how the batch was split; ``lockstep``
makes every worker run the same number of model calls (for models whose forward
is itself collective, e.g. FSDP).

The sampler does not know the modes apart: ``generate(..., parallel=...)``
takes a :class:`Parallel` strategy (single process by default), and a step asks
it for the token statistics of its rows (:meth:`Parallel.token_stats`) and
for a done-flag every worker agrees on (:meth:`Parallel.agree`); before the
first step :meth:`Parallel.begin` places this worker's rows in the global batch
and :meth:`Parallel.refuse` turns down settings the mode cannot serve. A new
mode (e.g. sequence-parallel canvases) is a new subclass, not a new branch in
the sampler.

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

__all__ = [
    "DataParallel", "Parallel", "SingleProcess", "VocabParallel", "all_done", "all_gather_flat",
    "bytes_per_step", "gather_partials", "merge_partials", "row_offset_of", "token_stats",
]


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
    vocabulary, and start on multiples of 32 when T > 0; the leading dims and every other argument must agree across
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


class Parallel:
    """How one generation is spread over processes: the strategy the sampler calls.

    The base class is one process holding whole rows (what ``parallel=None``
    means). A strategy is settings only; what a generation learns about its
    place (its rows' offset in the global batch) is returned by :meth:`begin`
    and kept by the sampler.
    """

    #: the model's logits are a vocabulary slice (their width is not the vocabulary size)
    slices_vocabulary: bool = False

    def refuse(self, *, seed, logits_processor, temperature=0.0) -> str | None:
        """Why this mode cannot run with these settings (the sampler raises it), or None."""
        return None

    def begin(self, batch_size: int) -> tuple[int, int]:
        """Once per generation, on the host, before the first step: (the global index
        of this worker's first row, the amount to shift the policy generator's
        seed by so that workers draw different numbers)."""
        return 0, 0

    def token_stats(self, rows: torch.Tensor, *, row_offset: int = 0, **kwargs) -> ops.TokenStats:
        """``dmkernels.token_stats`` of this step's logits ``rows`` [B, W, V_local]
        (keyword arguments as there), whole-row statistics on every worker.
        ``row_offset``: from :meth:`begin`."""
        return ops.token_stats(rows, **kwargs)

    def agree(self, done: torch.Tensor) -> torch.Tensor:
        """A done-flag (bool scalar on the device) every worker agrees on; queued,
        never read on the host here."""
        return done


class SingleProcess(Parallel):
    """One process, whole rows: what the sampler uses when ``parallel`` is None."""

    def __repr__(self):
        return "SingleProcess()"


@dataclass(frozen=True)
class VocabParallel(Parallel):
    """The model returns this rank's vocabulary slice of the logits.

    ``vocab_start`` is the global id of the slice's first column, a multiple of
    32 when sampling (temperature > 0: the sampler draws per group of 32
    global columns, which a slice must hold whole). Pass as
    ``generate(..., parallel=VocabParallel(vocab_start, group))``; every rank of
    ``group`` runs the same call with the same ``seed`` and gets the same tokens.
    """

    vocab_start: int
    group: object = None

    slices_vocabulary = True

    def refuse(self, *, seed, logits_processor, temperature=0.0) -> str | None:
        if seed is None:
            return "seed must be given with VocabParallel: every rank must draw the same numbers"
        if temperature > 0 and self.vocab_start % 32:
            # The sampler draws per group of 32 global columns (csrc/common/noise.h).
            return (f"VocabParallel(vocab_start={self.vocab_start}): vocab_start must be a multiple of 32 "
                    "when temperature > 0")
        if logits_processor is not None:
            return "a logits_processor needs whole rows: it cannot run on VocabParallel slices"
        return None

    def token_stats(self, rows: torch.Tensor, *, row_offset: int = 0, **kwargs) -> ops.TokenStats:
        return token_stats(rows, vocab_start=self.vocab_start, group=self.group, **kwargs)


@dataclass(frozen=True)
class DataParallel(Parallel):
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

    def begin(self, batch_size: int) -> tuple[int, int]:
        return row_offset_of(batch_size, self.group)

    def token_stats(self, rows: torch.Tensor, *, row_offset: int = 0, **kwargs) -> ops.TokenStats:
        # This worker's rows draw the noise of their rows in the global batch.
        partial = ops.token_stats_partial(rows, row_offset=row_offset * rows.shape[1], **kwargs)
        return merge_partials(partial.unsqueeze(0), kwargs.get("positions"))

    def agree(self, done: torch.Tensor) -> torch.Tensor:
        return all_done(done, self.group) if self.lockstep else done
