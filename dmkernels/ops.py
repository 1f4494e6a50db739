"""The public ops: the wrapper's own arguments (Python ints for tensors, a drawn
seed), the registry's checks of the op's arguments (dmkernels/_registry.py, the
same on every backend), then the compiled kernel for the tensor's device
(``torch.ops.dmkernels.*``), Triton, or the PyTorch reference.

No op reads a tensor's values on the host or allocates anything the size of the
logits (the reference fallback does; it warns once). Semantics live in
dmkernels/reference/, one file per op; schemas in dmkernels/_registry.py, for every
backend.
"""
from __future__ import annotations

import os

import torch

from . import _checks as check
from . import _extension
from . import triton as _triton
from ._registry import OPS as _SPECS
from ._registry import _positive_temperature
from .reference import (
    DenoiseStats,
    TokenStats,
    commit_reference,
    denoise_stats_reference,
    dilated_groups_reference,
    edit_reference,
    renoise_reference,
    select_entropy_bounded_reference,
    select_factor_reference,
    select_group_reference,
    select_threshold_reference,
    select_topk_reference,
    token_stats_reference,
)
from .reference.token_stats_partial import token_stats_partial_reference

# One public function per op of the registry (dmkernels/_registry.py), same name.
__all__ = ["DenoiseStats", "TokenStats", "backends", "dilated_groups", *_SPECS]


BACKENDS = ("native", "triton", "reference")


def check_backend_name(op: str, backend) -> None:
    """``backend`` must name a backend (or "auto"); ``op`` is the function named in the error."""
    if backend not in ("auto",) + BACKENDS:
        check.fail(op, f"backend must be one of {('auto',) + BACKENDS} (or None), got {backend!r}")


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
    else:
        check_backend_name(op, backend)
    return backend


def _run(op: str, device: torch.device, backend: str | None, args: tuple):
    """Check the raw arguments of ``op`` (the registry's checks, the same on every
    backend), then run it on the chosen backend: ``torch.ops.dmkernels.<op>``
    (native), ``torch.ops.dmkernels_triton.<op>``, or its reference (looked up
    here by name at call time)."""
    spec = _SPECS[op]
    args = spec.check(*args)
    chosen = _choose(op, device, backend)
    if chosen == "native":
        return getattr(torch.ops.dmkernels, op)(*args)
    if chosen == "triton":
        return getattr(torch.ops.dmkernels_triton, op)(*args)
    return spec.call_reference(globals()[spec.reference], args)


def _device(t) -> torch.device:
    """The device a call runs on (its first tensor's); a non-tensor there is
    named by the registry's check, which runs before the backend is chosen."""
    return t.device if isinstance(t, torch.Tensor) else torch.device("cpu")


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


def _draw_seed(op, device, seed, offset, rng, needed=True):
    """``seed=None``: drawn from torch's default generator where noise is ``needed``
    (0 otherwise, and when ``rng`` is given: rng wins). Returns (seed, rng)."""
    if rng is None and seed is None and needed and torch.compiler.is_compiling():
        # .item() would be a data-dependent value the graph cannot hold: draw the
        # seed as a tensor on the device and pass it as rng (torch's RNG still
        # governs it, though compiled code draws other values than eager).
        offset = check.integer(op, "offset", offset, minimum=0)
        drawn = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)
        rng = torch.cat((drawn, torch.full((1,), offset, dtype=torch.int64, device=device)))
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if needed and rng is None else 0
    return seed, rng


def _seed_and_rng(op, logits, temperature, seed, offset, rng):
    """The wrapper's part of token_stats(_partial): the seed (:func:`_draw_seed`);
    the rest is the registry's check of the raw arguments."""
    check.logits(op, logits)
    temperature = check.temperature(op, temperature)
    seed, rng = _draw_seed(op, logits.device, seed, offset, rng, needed=temperature > 0)
    return temperature, seed, rng


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
        an exact sample of ``softmax(x * float32(1/T))`` by hierarchical Gumbel-max
        (csrc/common/noise.h): one Gumbel per group of 32 columns against the
        group's log-mass picks the group, then per-column Gumbels inside it pick
        the column; the noise is a pure function of (seed, offset, row, group or
        column), so the same seed gives the same tokens on every backend. ``row``
        is the flat index over ``logits.shape[:-1]``. The arithmetic is scaled by
        a power of two, so finite logits whose ``x / T`` overflows float32 still
        sample right.
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
    temperature, seed, rng = _seed_and_rng(op, logits, temperature, seed, offset, rng)
    args = (logits, temperature, seed, offset, tempered_scores, positions) + (() if rng is None else (rng,))
    return TokenStats(*_run(op, logits.device, backend, args))


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
    worker's rows keep their global noise). At T > 0 ``vocab_start`` must be a
    multiple of 32 (ValueError otherwise): the sampler draws per group of 32
    global columns, which a slice must hold whole. The other arguments are
    token_stats's.
    """
    op = "token_stats_partial"
    temperature, seed, rng = _seed_and_rng(op, logits, temperature, seed, offset, rng)
    args = (logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start, row_offset)
    return _run(op, logits.device, backend, args)


def denoise_stats(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    seed: int | None = None,
    offset: int = 0,
    rng: torch.Tensor | None = None,
    processed_out: torch.Tensor | None = None,
    frozen: torch.Tensor | None = None,
    backend: str | None = None,
) -> DenoiseStats:
    """One pass over each position's vocabulary for a uniform-state diffusion step
    (DiffusionGemma): the sample, the argmax and the entropy of the tempered
    distribution, and optionally the tempered logits themselves.

    Parameters
    ----------
    logits : Tensor [..., V]
        float32, bfloat16 or float16, unit stride on V (token_stats' layout).
    temperature : float or 0-d float32 Tensor
        T > 0 (at least 2**-100; ValueError otherwise, naming ``temperature``). A
        tensor on the logits' device is read by the kernels, never on the host, so
        a step computing T on the GPU needs no sync and can be graph-captured; its
        value is checked only for CPU tensors (a GPU kernel given T <= 0 or NaN
        marks every row as having no distribution).
    seed, offset, rng
        The noise, as for token_stats (``seed=None`` draws one from torch's
        default generator; ``rng`` an int64 [2] (seed, offset) device tensor).
    processed_out : Tensor [..., V], optional
        float32, bfloat16 or float16, unit stride on V, no elements sharing memory.
        Written in place with ``z.to(processed_out.dtype)``, where
        ``z = (logits.float() / T).to(logits.dtype)`` (T rounded to float32, IEEE
        division), i.e. bit for bit ``(logits / T).to(processed_out.dtype)``:
        transformers' processed logits, e.g. DiffusionGemma's self-conditioning
        input in the embedding dtype. Frozen rows are left untouched.
    frozen : bool Tensor [...], optional
        Rows to skip: token -1, argmax -1, entropy +inf, processed_out untouched.

    Returns
    -------
    DenoiseStats(token, argmax, entropy), each shaped ``logits.shape[:-1]``:
    token int64, bit for bit ``token_stats(logits, temperature=float(T), seed=seed,
    offset=offset, rng=rng, tempered_scores=True).token`` (a sample of
    ``softmax(x * float32(1 / T))``, float32(1 / T) divided in double);
    argmax int64, the first index of the maximum of z (``torch.argmax(logits / T, -1)``);
    entropy float32, nats of that distribution (token_stats' tempered entropy).
    A row with no distribution (a NaN or +inf logit, only -inf, or ``x / T``
    overflowing float32) gets token -1, argmax -1 and entropy NaN (its
    processed_out row is still written).
    """
    op = "denoise_stats"
    check.logits(op, logits)
    if isinstance(temperature, torch.Tensor):
        t_float, t_tensor = 1.0, temperature  # the raw op reads the tensor (on the device for a GPU)
    else:
        t_float, t_tensor = _positive_temperature(op, temperature), None
    _, seed, rng = _seed_and_rng(op, logits, 1.0, seed, offset, rng)  # T > 0: always sampling
    args = (logits, t_float, t_tensor, seed, offset, rng, processed_out, frozen)
    return DenoiseStats(*_run(op, logits.device, backend, args))


def _k_tensor(op: str, k, scores) -> torch.Tensor:
    """A Python int k becomes a [B] tensor on the scores' device (any int: the
    kernels clamp k to [0, #eligible], as for a tensor)."""
    if isinstance(k, int) and not isinstance(k, bool):
        k = check.integer(op, "k", k, minimum=-(2**63))
        check.scores_2d(op, "scores", scores)
        return torch.full((scores.shape[0],), k, dtype=torch.int64, device=scores.device)
    return k


def select_topk(
    scores: torch.Tensor, k: torch.Tensor | int, eligible: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Per row, exactly ``clamp(k[b], 0, eligible[b].sum())`` eligible positions with
    the highest scores; ties to the lowest index, NaN scores after every number.

    Parameters
    ----------
    scores : float Tensor [B, L]
    k : int Tensor [B] on the scores' device (or a Python int for every row).
        A negative k selects nothing, on every backend: k is never read on the
        host, so the rule needs no sync (it is not an error anywhere).
    eligible : bool Tensor [B, L]

    Returns
    -------
    bool Tensor [B, L]
    """
    return _run("select_topk", _device(scores), backend, (scores, _k_tensor("select_topk", k, scores), eligible))


def select_threshold(
    scores: torch.Tensor, eligible: torch.Tensor, threshold: float, *, backend: str | None = None
) -> torch.Tensor:
    """Fast-dLLM threshold rule: eligible positions with ``score >= threshold``, plus
    the best eligible one, so every row with an eligible position commits one.

    Returns a bool Tensor [B, L].
    """
    return _run("select_threshold", _device(scores), backend, (scores, eligible, threshold))


def select_factor(
    scores: torch.Tensor, eligible: torch.Tensor, factor: float, *, backend: str | None = None
) -> torch.Tensor:
    """Fast-dLLM factor rule: with eligible scores sorted ``c_1 >= c_2 >= ...``, the
    longest prefix of n positions whose members all satisfy
    ``(n + 1) * (1 - c_n) <= factor``; at least the best one.

    Returns a bool Tensor [B, L].
    """
    return _run("select_factor", _device(scores), backend, (scores, eligible, factor))


def select_entropy_bounded(
    error: torch.Tensor, entropy: torch.Tensor, eligible: torch.Tensor, gamma: float, *, backend: str | None = None
) -> torch.Tensor:
    """EB-Sampler rule: eligible positions ordered by ``error`` ascending (an error
    proxy: entropy, -confidence or -margin); the longest prefix whose entropies
    satisfy ``sum(H) - max(H) <= gamma``; at least the first one.

    Returns a bool Tensor [B, L].
    """
    return _run("select_entropy_bounded", _device(error), backend, (error, entropy, eligible, gamma))


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
    if not isinstance(step, torch.Tensor):
        # A host step must be a group index: a float, str or bool is a caller's mistake.
        if isinstance(step, bool) or not isinstance(step, int):
            check.fail(op, f"step must be an int >= 0 or an int tensor, got {type(step).__name__}", TypeError)
        step = check.integer(op, "step", step, minimum=0)
        step = torch.full((), step, dtype=torch.int64, device=_device(eligible))
    return _run(op, _device(eligible), backend, (eligible, groups, step))


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
    if vocab_size is not None:
        vocab_size = check.integer(op, "vocab_size", vocab_size, minimum=1)
        mask_id = check.integer(op, "mask_id", mask_id, minimum=0)
        if mask_id >= vocab_size:
            check.fail(op, f"mask_id = {mask_id} is outside the vocabulary [0, {vocab_size})")
    return _run(op, _device(x), backend, (x, token, select, mask_id))


def edit_(
    x: torch.Tensor,
    token: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    threshold: float,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token editing (LLaDA2.1, diffusers' LLaDA2 scheduler): rewrite ``x`` in place
    where ``editable & (token != x) & (confidence > threshold) & (token >= 0)``.

    The caller decides what may be edited: for LLaDA2.1, the committed positions
    of the current block (``x != mask_id``, not the prompt, rows still running);
    the prompt and earlier blocks are simply outside the ``x`` view. A proposed
    ``mask_id`` is written like any other token (as the public samplers do);
    exclude it through ``editable`` if the model may propose it.

    Parameters
    ----------
    x : int64 or int32 Tensor [B, W], any strides (e.g. the current block of a
        canvas) but no two elements sharing memory (an expand()ed tensor is refused)
    token : int64 or int32 Tensor [B, W], the proposed tokens; negative means "no
        token" (token_stats' -1) and is never written. Editable tokens must fit
        x's dtype (checked for CPU tensors; on a GPU an int64 token >= 2**31 into
        an int32 canvas is not checked and wraps, as ``token.to(torch.int32)``)
    confidence : float32, float64, bfloat16 or float16 Tensor [B, W], the
        probability of the proposed token
    editable : bool Tensor [B, W]
    threshold : float, not NaN. Strict: ``confidence > threshold``, compared as
        PyTorch compares a tensor with a Python float, in the confidence's dtype
        (the threshold rounded to it). For float32 confidences this decides ties
        exactly like the public ``x0_p > editing_threshold``. A NaN confidence
        never edits; ``-inf`` edits every non-NaN, non-``-inf`` confidence and
        ``inf`` edits nothing.

    Returns
    -------
    changed : bool Tensor [B, W], the positions rewritten (the KV-cache entries
        that went stale); ``x`` differs from before exactly there (barring the
        unchecked wrap above)
    edits : int64 Tensor [B], ``changed.sum(-1)``, on the device: a row with
        ``edits == 0`` (and no mask left) has finished its block, which a sampler
        can act on without a host sync
    """
    return _run("edit_", _device(x), backend, (x, token, confidence, editable, threshold))


def renoise_(
    canvas: torch.Tensor,
    sample: torch.Tensor,
    accept: torch.Tensor,
    vocab_size: int,
    *,
    frozen: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    rng: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Re-noise a uniform-state diffusion canvas in place (DiffusionGemma's
    ``renoise_canvas``): keep the accepted samples, draw a fresh uniform token
    everywhere else, leave frozen rows alone. Elementwise over [B, L]::

        canvas[b, l] = canvas[b, l]  if frozen[b]
                       sample[b, l]  elif accept[b, l]
                       U[0, vocab_size) otherwise

    The random token of position (b, l) is a pure function of (seed, offset,
    b * L + l): 64 bits from its own Philox stream (csrc/common/noise.h,
    "Re-noising", disjoint from token_stats' noise) mapped to [0, vocab_size) by a
    multiply-high (each token's probability within 2**-64 of 1 / vocab_size), so
    the same seed writes the same tokens on every backend. Every token of the
    vocabulary can be drawn, as in transformers. One pass, in place: no host
    sync (given ``seed`` or ``rng``), nothing allocated but a [B] count: the raw
    op (``torch.ops.dmkernels.renoise_``) returns the random tokens written per
    row, int64 [B], because a custom op may not return its mutated input.

    Parameters
    ----------
    canvas : int64 or int32 Tensor [B, L], any strides but no two elements sharing
        memory; written in place.
    sample : int64 or int32 Tensor [B, L], written as given where accepted (cast
        to the canvas's dtype; an int64 token that does not fit an int32 canvas is
        refused for CPU tensors and wraps on a GPU).
    accept : bool Tensor [B, L]
    vocab_size : int, >= 1; at most 2**31 for an int32 canvas.
    frozen : bool Tensor [B], optional: rows left untouched (finished denoising).
    seed : int, optional
        >= 0. None draws one from torch's default CPU generator (as token_stats
        does; that reads a CPU tensor, so a sampler step passes ``seed`` or
        ``rng``). Under ``torch.compile`` it is drawn as an ``rng`` tensor.
    offset : int
        >= 0, e.g. the denoising step, so that steps draw different tokens.
    rng : int64 Tensor [2], optional
        ``(seed, offset)`` on the canvas's device, overriding both; the kernels read
        it on the device (CUDA-graph friendly).

    Returns
    -------
    canvas (the same tensor).
    """
    op = "renoise_"
    check.tensor(op, "canvas", canvas)
    seed, rng = _draw_seed(op, canvas.device, seed, offset, rng)
    _run(op, _device(canvas), backend, (canvas, sample, accept, frozen, vocab_size, seed, offset, rng))
    return canvas
