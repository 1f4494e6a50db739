"""The public ops: argument checks, then the compiled kernel for the tensor's
device (``torch.ops.dmkernels.*``), or the PyTorch reference where there is none.

No op reads a tensor's values on the host or allocates anything the size of the
logits (the reference fallback does; it warns once). Semantics live in
dmkernels/reference/, one file per op; schemas in csrc/ops.cpp.
"""
from __future__ import annotations

import os

import torch

from . import _checks as check
from . import _extension
from . import triton as _triton
from .reference import (
    TokenStats,
    commit_reference,
    dilated_groups_reference,
    select_entropy_bounded_reference,
    select_factor_reference,
    select_group_reference,
    select_threshold_reference,
    select_topk_reference,
    token_stats_reference,
)
from .reference.token_stats_partial import MAX_COLUMNS, token_stats_partial_reference

__all__ = [
    "TokenStats",
    "backends",
    "commit_",
    "dilated_groups",
    "select_entropy_bounded",
    "select_factor",
    "select_group",
    "select_threshold",
    "select_topk",
    "token_stats",
    "token_stats_partial",
]


BACKENDS = ("native", "triton", "reference")


def _choose(op: str, device: torch.device, backend: str | None) -> str:
    """The backend that runs ``op`` on ``device``: the ``backend`` keyword, else
    DMKERNELS_BACKEND, else the compiled kernel where built, Triton for CUDA
    tensors where installed, and the reference as the last resort."""
    backend = backend or os.environ.get("DMKERNELS_BACKEND") or "auto"
    if backend == "auto":
        if _extension.has_kernel(op, device):
            return "native"
        if device.type == "cuda" and _triton.AVAILABLE:
            _triton.load()
            return "triton"
        _extension.note_fallback(op, device)
        return "reference"
    if backend == "native":
        if not _extension.has_kernel(op, device):
            why = _extension.REASON if not _extension.LOADED else f"dmkernels._C has no {device.type} kernel"
            check.fail(op, f"backend='native' is not available for {device.type} tensors: {why}", RuntimeError)
    elif backend == "triton":
        if not _triton.AVAILABLE:
            check.fail(op, f"backend='triton' is not available: {_triton.REASON}", RuntimeError)
        _triton.load()
    elif backend != "reference":
        check.fail(op, f"backend must be one of {('auto',) + BACKENDS} (or None), got {backend!r}")
    return backend


def _run(op: str, device: torch.device, backend: str | None, args: tuple, reference):
    """Run ``op`` on the chosen backend: ``torch.ops.dmkernels.<op>`` (native),
    ``torch.ops.dmkernels_triton.<op>``, or ``reference(*args)``."""
    chosen = _choose(op, device, backend)
    if chosen == "native":
        return getattr(torch.ops.dmkernels, op)(*args)
    if chosen == "triton":
        return getattr(torch.ops.dmkernels_triton, op)(*args)
    return reference(*args)


def backends() -> dict[str, str]:
    """What can run the ops here, each "available" or the reason it is not:
    ``cpu`` and ``cuda`` (the compiled kernels), ``triton``, ``reference``."""
    cpu = "available" if _extension.has_kernel("token_stats", torch.device("cpu")) else _extension.REASON
    if _extension.has_kernel("token_stats", torch.device("cuda")):
        cuda = "available"
    elif not _extension.LOADED:
        cuda = _extension.REASON
    else:
        cuda = "not built: this build of dmkernels._C has no CUDA kernels"
    return {"cpu": cpu, "cuda": cuda, "triton": _triton.REASON, "reference": "available"}


def _check_token_stats(op, logits, temperature, seed, offset, positions, tempered_scores, rng):
    """Arguments shared by token_stats and token_stats_partial, checked and normalised."""
    logits = check.logits(op, logits)
    temperature = check.temperature(op, temperature)
    offset = check.integer(op, "offset", offset, minimum=0)
    if rng is None and seed is None and temperature > 0 and torch.compiler.is_compiling():
        # .item() would be a data-dependent value the graph cannot hold: draw the
        # seed as a tensor on the logits' device and pass it as rng (torch's RNG
        # still governs it, though compiled code draws other values than eager).
        drawn = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=logits.device)
        rng = torch.cat((drawn, torch.full((1,), offset, dtype=torch.int64, device=logits.device)))
    if rng is not None:
        rng = check.tensor(op, "rng", rng)
        check.same_device(op, "rng", rng, logits, "logits")
        check.dtype(op, "rng", rng, (torch.int64,))
        check.shape(op, "rng", rng, (2,), "(seed, offset)")
        seed = 0 if seed is None else seed  # unused: rng wins
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0
    seed = check.integer(op, "seed", seed, minimum=0)
    if positions is not None:
        positions = check.tensor(op, "positions", positions)
        check.same_device(op, "positions", positions, logits, "logits")
        check.dtype(op, "positions", positions, (torch.bool,))
        check.shape(op, "positions", positions, logits.shape[:-1], "logits.shape[:-1]")
    return logits, temperature, seed, offset, positions, bool(tempered_scores), rng


def _rng_values(op: str, rng: torch.Tensor) -> tuple[int, int]:
    """(seed, offset) of an rng tensor, read on the host (reference path only)."""
    seed, offset = (int(v) for v in rng.tolist())
    if seed < 0 or offset < 0:
        check.fail(op, f"rng must hold (seed, offset) >= 0, got {(seed, offset)}")
    return seed, offset


def token_stats(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    tempered_scores: bool = False,
    rng: torch.Tensor | None = None,
    backend: str | None = None,
) -> TokenStats:
    """Token choice and its scores for every position, in one pass over the vocabulary.

    Parameters
    ----------
    logits : Tensor [..., V]
        float32, bfloat16 or float16, any strides with unit stride on V.
    temperature : float
        0 takes the argmax (lowest index on ties, as ``torch.argmax``). T > 0 draws
        a Gumbel-max sample ``argmax(x * float32(1/T) + g)``, with ``g`` a pure
        function of (seed, offset, row, column): the same seed gives the same
        tokens on every backend. ``row`` is the flat index over ``logits.shape[:-1]``.
        The sum is computed scaled by a power of two (csrc/common/noise.h), so
        finite logits whose ``x / T`` overflows float32 still sample right.
        0 < T < 2**-100 is refused (ValueError): the scaled noise would leave
        float32's normal range. With ``tempered_scores``, a row whose ``x / T``
        overflows float32 has no representable distribution: token -1, NaN scores.
    seed : int, optional
        Seed of the noise (>= 0). None draws one from torch's default generator
        (so ``torch.manual_seed`` governs it); ignored at temperature 0. Under
        ``torch.compile`` it is drawn as a tensor on the logits' device and passed
        as ``rng`` (so the graph traces; compiled and eager draw different seeds).
    offset : int
        Noise stream offset (>= 0), e.g. the denoising step, so that steps differ.
    positions : bool Tensor [...], optional
        Only these rows are computed; the others get token -1, confidence and
        margin -inf and entropy +inf (the worst value of every score).
    tempered_scores : bool
        Which distribution the scores describe when T > 0. False (default, LLaDA):
        ``softmax(x)``; True (Dream): ``softmax(x / T)``, the one sampled from.
        At T = 0 the scores always describe ``softmax(x)``.
    rng : int64 Tensor [2], optional
        ``(seed, offset)`` on the logits' device, overriding ``seed`` and
        ``offset``. The kernels read it on the device, so a step captured in a
        CUDA graph draws fresh noise on every replay after ``rng[1] += 1``.
    backend : {None, "auto", "native", "triton", "reference"}
        Which implementation runs (every op takes this keyword). None reads
        DMKERNELS_BACKEND, else "auto": the compiled kernel for the tensor's
        device where built, Triton for CUDA tensors, the reference otherwise.

    Returns
    -------
    TokenStats(token, confidence, margin, entropy), each shaped ``logits.shape[:-1]``:
    token int64, the rest float32 (margin = top-1 minus top-2 probability, entropy
    in nats). A row with no distribution (a NaN or +inf logit, or only -inf) gets
    token -1 and NaN scores; commit_ never writes token -1.
    """
    op = "token_stats"
    logits, temperature, seed, offset, positions, tempered_scores, rng = _check_token_stats(
        op, logits, temperature, seed, offset, positions, tempered_scores, rng)
    def reference(logits, temperature, seed, offset, tempered_scores, positions, rng=None):
        if rng is not None:  # the reference reads it on the host
            seed, offset = _rng_values(op, rng)
        return token_stats_reference(logits, temperature=temperature, seed=seed, offset=offset,
                                     positions=positions, tempered_scores=tempered_scores)

    args = (logits, temperature, seed, offset, tempered_scores, positions) + (() if rng is None else (rng,))
    return TokenStats(*_run(op, logits.device, backend, args, reference))


def token_stats_partial(
    logits: torch.Tensor,
    *,
    vocab_start: int = 0,
    row_offset: int = 0,
    temperature: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    tempered_scores: bool = False,
    rng: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """token_stats of a vocabulary slice, left unfinished so that slices merge.

    ``logits`` [..., V] holds columns ``[vocab_start, vocab_start + V)`` of a larger
    vocabulary (one tensor-parallel rank's shard). Returns float32 [..., 8] per row:
    max, softmax sum, entropy sum, second value, token key, global token column,
    token score, invalid flag (layout and merge rule in
    dmkernels/reference/token_stats_partial.py). Partials of slices that tile the
    vocabulary merge with ``dmkernels.distributed.merge_partials`` into exactly
    ``token_stats`` of the whole rows: the noise of a column is that of its global
    index, and row r draws the noise of row ``row_offset + r`` (a data-parallel
    worker's rows keep their global noise). The other arguments are token_stats's.
    """
    op = "token_stats_partial"
    logits, temperature, seed, offset, positions, tempered_scores, rng = _check_token_stats(
        op, logits, temperature, seed, offset, positions, tempered_scores, rng)
    vocab_start = check.integer(op, "vocab_start", vocab_start, minimum=0)
    row_offset = check.integer(op, "row_offset", row_offset, minimum=0)
    if vocab_start + logits.shape[-1] > MAX_COLUMNS:
        check.fail(op, f"vocab_start + V = {vocab_start + logits.shape[-1]} exceeds 2**24")
    if row_offset + logits.numel() // logits.shape[-1] > 2**32:
        check.fail(op, "row_offset + rows exceeds 2**32")

    def reference(logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start, row_offset):
        if rng is not None:
            seed, offset = _rng_values(op, rng)
        return token_stats_partial_reference(logits, temperature=temperature, seed=seed, offset=offset,
                                             positions=positions, tempered_scores=tempered_scores,
                                             vocab_start=vocab_start, row_offset=row_offset)

    args = (logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start, row_offset)
    return _run(op, logits.device, backend, args, reference)


def _k_tensor(op: str, k, scores: torch.Tensor) -> torch.Tensor:
    if isinstance(k, int) and not isinstance(k, bool):
        check.integer(op, "k", k, minimum=0)
        return torch.full((scores.shape[0],), k, dtype=torch.int64, device=scores.device)
    k = check.tensor(op, "k", k)
    check.same_device(op, "k", k, scores, "scores")
    check.dtype(op, "k", k, check.INDEX_DTYPES)
    check.shape(op, "k", k, (scores.shape[0],), "one count per row of scores")
    return k


def select_topk(
    scores: torch.Tensor, k: torch.Tensor | int, eligible: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Per row, exactly ``min(k[b], eligible[b].sum())`` eligible positions with the
    highest scores; ties to the lowest index, NaN scores after every number.

    Parameters
    ----------
    scores : float Tensor [B, L]
    k : int Tensor [B] on the scores' device (or a Python int for every row)
    eligible : bool Tensor [B, L]

    Returns
    -------
    bool Tensor [B, L]
    """
    op = "select_topk"
    scores = check.scores_2d(op, "scores", scores)
    eligible = check.eligible(op, eligible, scores, "scores")
    k = _k_tensor(op, k, scores)
    def reference(scores, k, eligible):
        if k.device.type == "cpu" and k.numel() and int(k.min()) < 0:  # free on the CPU; a sync elsewhere
            check.fail(op, f"k must be >= 0, got k = {k.tolist()}")
        return select_topk_reference(scores, k, eligible)

    return _run(op, scores.device, backend, (scores, k, eligible), reference)  # the CPU kernel checks k >= 0


def select_threshold(
    scores: torch.Tensor, eligible: torch.Tensor, threshold: float, *, backend: str | None = None
) -> torch.Tensor:
    """Fast-dLLM threshold rule: eligible positions with ``score >= threshold``, plus
    the best eligible one, so every row with an eligible position commits one.

    Returns a bool Tensor [B, L].
    """
    op = "select_threshold"
    scores = check.scores_2d(op, "scores", scores)
    eligible = check.eligible(op, eligible, scores, "scores")
    threshold = check.number(op, "threshold", threshold)
    return _run(op, scores.device, backend, (scores, eligible, threshold), select_threshold_reference)


def select_factor(
    scores: torch.Tensor, eligible: torch.Tensor, factor: float, *, backend: str | None = None
) -> torch.Tensor:
    """Fast-dLLM factor rule: with eligible scores sorted ``c_1 >= c_2 >= ...``, the
    longest prefix of n positions whose members all satisfy
    ``(n + 1) * (1 - c_n) <= factor``; at least the best one.

    Returns a bool Tensor [B, L].
    """
    op = "select_factor"
    scores = check.scores_2d(op, "scores", scores)
    eligible = check.eligible(op, eligible, scores, "scores")
    factor = check.number(op, "factor", factor)
    return _run(op, scores.device, backend, (scores, eligible, factor), select_factor_reference)


def select_entropy_bounded(
    error: torch.Tensor, entropy: torch.Tensor, eligible: torch.Tensor, gamma: float, *, backend: str | None = None
) -> torch.Tensor:
    """EB-Sampler rule: eligible positions ordered by ``error`` ascending (an error
    proxy: entropy, -confidence or -margin); the longest prefix whose entropies
    satisfy ``sum(H) - max(H) <= gamma``; at least the first one.

    Returns a bool Tensor [B, L].
    """
    op = "select_entropy_bounded"
    error = check.scores_2d(op, "error", error)
    entropy = check.scores_2d(op, "entropy", entropy)
    check.same_device(op, "entropy", entropy, error, "error")
    check.shape(op, "entropy", entropy, error.shape, "error.shape")
    eligible = check.eligible(op, eligible, error, "error")
    gamma = check.number(op, "gamma", gamma)
    args = (error, entropy, eligible, gamma)
    return _run(op, error.device, backend, args, select_entropy_bounded_reference)


def dilated_groups(block_length: int, base: int = 2, *, device: torch.device | str | None = None) -> torch.Tensor:
    """DUS group of every offset of a block, coarse to fine (int64 [block_length]).

    Offset o is in group g when the g-th stride of ``B // base, B // base**2, ..., 1``
    is the first that divides o: group 0 is {0, B/a, 2B/a, ...}, far-apart
    positions decoded together first; a block takes about ``log_base(B)`` steps.
    A constant per block length, built once on the host; select_group consumes it.
    """
    op = "dilated_groups"
    block_length = check.integer(op, "block_length", block_length, minimum=1)
    base = check.integer(op, "base", base, minimum=2)
    return dilated_groups_reference(block_length, base, device=device)


def select_group(
    eligible: torch.Tensor, groups: torch.Tensor, step: torch.Tensor | int, *, backend: str | None = None
) -> torch.Tensor:
    """DUS selection: eligible positions whose group (from :func:`dilated_groups`) is
    ``<= step``. Positions of earlier groups still masked are taken too, and a row
    with no eligible position in those groups takes its first non-empty group, so
    every row with an eligible position commits.

    Parameters
    ----------
    eligible : bool Tensor [B, L]
    groups : int Tensor [L] or [B, L]
    step : int, or int Tensor [] or [B] on the device (for graph capture)
    """
    op = "select_group"
    eligible = check.tensor(op, "eligible", eligible)
    if eligible.dim() != 2:
        check.fail(op, f"eligible must be 2-D [B, L], got shape {list(eligible.shape)}")
    check.dtype(op, "eligible", eligible, (torch.bool,))
    groups = check.tensor(op, "groups", groups)
    check.same_device(op, "groups", groups, eligible, "eligible")
    check.dtype(op, "groups", groups, check.INDEX_DTYPES)
    B, L = eligible.shape
    if tuple(groups.shape) not in ((L,), (B, L)):
        check.fail(op, f"groups must have shape [L] or [B, L] = {[B, L]}, got {list(groups.shape)}")
    if not isinstance(step, torch.Tensor):
        # A host step must be a group index: a float, str or bool is a caller's mistake.
        if isinstance(step, bool) or not isinstance(step, int):
            check.fail(op, f"step must be an int >= 0 or an int tensor, got {type(step).__name__}", TypeError)
        step = check.integer(op, "step", step, minimum=0)
        step = torch.full((), step, dtype=torch.int64, device=eligible.device)
    step = check.tensor(op, "step", step)
    check.same_device(op, "step", step, eligible, "eligible")
    check.dtype(op, "step", step, check.INDEX_DTYPES)
    if step.dim() != 0 and tuple(step.shape) != (B,):
        check.fail(op, f"step must be a scalar or have shape [B] = [{B}], got {list(step.shape)}")
    return _run(op, eligible.device, backend, (eligible, groups, step), select_group_reference)


def commit_(
    x: torch.Tensor,
    token: torch.Tensor,
    select: torch.Tensor,
    mask_id: int,
    *,
    vocab_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``token`` into the canvas ``x`` in place where ``select`` and ``x == mask_id``.

    A committed token (``x != mask_id``) is never overwritten, and positions whose
    token is negative (token_stats' "no token") or ``mask_id`` itself are skipped.

    Parameters
    ----------
    x : int64 or int32 Tensor [B, L], any strides (e.g. the current block of a canvas)
        but no two elements sharing memory (an expand()ed tensor is refused)
    token : int64 or int32 Tensor [B, L]; selected tokens must fit x's dtype
        (checked for CPU tensors; on a GPU an int64 token >= 2**31 into an int32
        canvas is not checked and wraps)
    select : bool Tensor [B, L]
    mask_id : int
    vocab_size : int, optional
        When given, ``mask_id`` must lie in ``[0, vocab_size)``.

    Returns
    -------
    changed : bool Tensor [B, L], the positions written by this call (the KV
        cache entries that went stale)
    remaining : int64 Tensor [B], masks left per row, on the device
    """
    op = "commit_"
    x = check.tensor(op, "x", x)
    if x.dim() != 2:
        check.fail(op, f"x must be 2-D [B, L], got shape {list(x.shape)}")
    check.dtype(op, "x", x, check.INDEX_DTYPES)
    check.no_internal_overlap(op, "x", x)
    for name, t, dtypes in (("token", token, check.INDEX_DTYPES), ("select", select, (torch.bool,))):
        check.tensor(op, name, t)
        check.same_device(op, name, t, x, "x")
        check.dtype(op, name, t, dtypes)
        check.shape(op, name, t, x.shape, "x.shape")
    mask_id = check.integer(op, "mask_id", mask_id, minimum=0)
    if vocab_size is not None:
        vocab_size = check.integer(op, "vocab_size", vocab_size, minimum=1)
        if mask_id >= vocab_size:
            check.fail(op, f"mask_id = {mask_id} is outside the vocabulary [0, {vocab_size})")
    if x.dtype == torch.int32 and mask_id > 2**31 - 1:
        check.fail(op, f"mask_id = {mask_id} does not fit x's dtype int32")
    def reference(x, token, select, mask_id):
        check.tokens_fit_int32(op, x, token, select)  # the CPU kernel checks the same
        return commit_reference(x, token, select, mask_id)

    return _run(op, x.device, backend, (x, token, select, mask_id), reference)
