"""Drop-in for SDAR's ``block_diffusion_generate`` (JetAstra/SDAR, ``generate.py``)::

    from dmkernels.compat.sdar import block_diffusion_generate
    x = block_diffusion_generate(model, {"input_ids": ids}, mask_id=151669, gen_length=256,
                                 block_length=4, denoising_steps=4, temperature=0)

Same arguments, defaults and return value as the public function (the whole
canvas ``[B, T]``: prompt, generated blocks, ``mask_id`` in blocks never reached
after a stop), the same tokens at temperature 0, the same distribution when
sampling (the public code draws with ``torch.multinomial``; here dmkernels'
seeded Gumbel-max noise draws from the same tempered, top-k / top-p filtered
distribution, its seed taken from torch's default generator, so
``torch.manual_seed`` still governs). The four remasking strategies run on
dmkernels' ops: :func:`dmkernels.token_stats` (token, its probability, the
entropy of its distribution), :func:`dmkernels.select_topk` and
:func:`dmkernels.commit_`.

Semantics, every public bug and the intent chosen for it are those of the eager
reference :mod:`dmkernels.bench.eager.sdar` (its module docstring), namely:
``temperature=0`` is greedy (argmax of the logits, confidence ``softmax(logits)``
at the token; public: NaN then a ``multinomial`` error); only masked positions
are ever committed (public top-k may overwrite prompt or committed tokens); equal
scores go to the lowest position; ``sequential`` commits the first masked
positions; ``entropy_bounded`` uses the per-position entropy of the sampling
distribution, commits the ``k`` lowest-entropy masks with ``k`` = the number of
prefix sums (entropies ascending) ``< eb_threshold``, clamped to ``[1, #masks]``,
and runs a block until it has no mask (at most ``block_length`` steps; public:
``UnboundLocalError``); a block still holding masks after its steps raises
RuntimeError (public: ``IndexError``; only a model that samples ``mask_id``).

``entropy_bounded`` and :func:`dmkernels.select_entropy_bounded`: the op keeps the
longest prefix (entropies ascending) with ``sum(H) - max(H) <= gamma``, i.e.
position ``k`` is in when the sum of the ``k - 1`` before it is ``<= gamma``: it
includes the position whose entropy crosses the bound (the EB-sampler paper's
form). SDAR's intent (its ``cumsum < eb_threshold`` then ``searchsorted``)
includes position ``k`` only when the sum *through* ``k`` is ``< eb_threshold``:
one position fewer whenever the bound is crossed (entropies 0.3, 0.5 and
threshold 0.5: the op commits 2, SDAR 1), and strict. So the count is computed
here (a sort and a cumsum over the block, in float64, on the device) and the
positions taken with ``select_topk`` on ``-entropy``.

What differs, on purpose:

* **Batches.** ``prompt['input_ids']`` may be ``[B, P]`` with
  ``prompt['attention_mask']`` (0 = padding, e.g. left padding; public: ignored,
  and one row only): every row gets what it would get alone (its own block grid,
  its own stop), on one re-laid batch canvas (:mod:`dmkernels.blockcache`). The
  result is the eager reference's: row ``r`` is its input's padding tokens, then
  its own canvas, then ``mask_id`` up to the widest row; without padding the
  rows' canvases stacked, and ``B = 1`` exactly the public ``[1, T]``. Rows stop
  independently: a row whose generated part holds a ``stopping_criteria_idx``
  after a block generates no further block (public: one row's stop stops all).
  Nothing inside a step reads the device.
* **Exact block KV cache** (``cache="block"``): each step runs the model on the
  current block only against the cached keys and values of the prompt and the
  finished blocks (the LM head on the block's rows only). SDAR runs one extra
  ``store_kv`` forward per block to cache its final keys; here they are computed
  by the next block's first call (queries = the finished block and the new one,
  block-causal between them), so each block costs exactly its denoising calls.
  Calls pass ``store_kv=True`` with a :class:`~dmkernels.blockcache.BlockKVCache`
  (keys written at the cache's frontier, which the sampler advances once they
  are final) and a bool block-causal mask ``[B, 1, q, keys]``. ``cache=None``
  recomputes the window ``[0, block end)`` every step.
* Greedy runs at any ``top_k`` / ``top_p`` (ignored at temperature 0, as the
  public LLaDA2 code); ``top_k=None`` / ``top_p=None`` mean off (public:
  ``TypeError``); ``top_k >= V`` filters nothing (public: ``topk`` raises).
* Refused before any model call (public: a crash later or a silent result):
  ``denoising_steps``, ``block_length``, ``gen_length`` < 1; a negative or
  non-finite ``temperature``; ``confidence_threshold`` outside [0, 1]; a missing
  or non-positive ``eb_threshold`` for ``entropy_bounded``; an unknown
  ``remasking_strategy``; ``mask_id`` or a stop id outside the vocabulary; a
  prompt holding ``mask_id``; a prompt that is not a dict with 2-D integer
  ``input_ids``. ``stopping_criteria_idx`` may be an int or a list of ints.
* Confidence and entropy come from token_stats in float32 (a float64 model's
  block logits are cast; a bf16 model's are read as they are), where the public
  code computes them in the logits' dtype: scores that agree to float32
  precision rank alike, and greedy tokens are the same (float32, float64 and
  bf16 test models: every run identical). One exception: with an empty prompt
  the first block is all ``mask_id``, so its positions have mathematically equal
  logits; the public code (and the reference) then order them by rounding noise
  of the float64/float32 attention, here they tie exactly in float32 and go to
  the lowest position, as the tie rule says.
* Tokens are placed on the model's device.

Keyword-only extensions: ``seed`` (token noise when sampling; None draws it from
torch's default generator), ``backend`` (the ops' backend), ``cache`` ("block" or
None), ``block_causal`` (declare a model block-causal for the cache).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .. import _checks as check
from .. import ops
from ..block_sampler import BlockDiffusionSampler, unpadded_prompts
from ..blockcache import check_block_causal
from ..ops import check_backend_name
from ..sampler import _model_device

__all__ = ["block_diffusion_generate", "transfer_counts", "STRATEGIES"]

_CALLER = "compat.sdar.block_diffusion_generate"
STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded")


def transfer_counts(block_length: int, steps: int) -> list[int]:
    """SDAR's commit counts: ``block_length`` split over ``steps``, the first
    ``block_length % steps`` steps one more (later steps 0 when steps > block_length)."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _fail(msg, kind=ValueError):
    check.fail(_CALLER, msg, kind)


def _vocab_size(model):
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def _check_args(model, prompt, mask_id, gen_length, block_length, denoising_steps, temperature, top_k, top_p,
                remasking_strategy, confidence_threshold, eb_threshold, stopping_criteria_idx, cache, backend):
    """Every argument, on the host, before any model call. Returns (input_ids,
    keep mask or None, unpadded prompts, stop ids, vocab size)."""
    if not isinstance(prompt, Mapping) or "input_ids" not in prompt:
        _fail(f"prompt must be a dict with 'input_ids' (as SDAR's generate.py), got {type(prompt).__name__}",
              TypeError)
    ids = prompt["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        _fail("prompt['input_ids'] must be an int64 or int32 tensor [B, prompt_length]", TypeError)
    if ids.shape[0] == 0:
        _fail("prompt['input_ids'] has no rows (a batch of 0)")
    block_length = check.integer(_CALLER, "block_length", block_length, minimum=1)
    denoising_steps = check.integer(_CALLER, "denoising_steps", denoising_steps, minimum=1)
    gen_length = check.integer(_CALLER, "gen_length", gen_length, minimum=1)
    check.real(_CALLER, "temperature", temperature, minimum=0.0)
    check.temperature(_CALLER, temperature)
    if top_k is not None:
        check.integer(_CALLER, "top_k", top_k, minimum=-(2**62))
    if top_p is not None:
        check.real(_CALLER, "top_p", top_p)
    if remasking_strategy not in STRATEGIES:
        _fail(f"unknown remasking_strategy {remasking_strategy!r}; expected one of {', '.join(STRATEGIES)}")
    check.real(_CALLER, "confidence_threshold", confidence_threshold, minimum=0.0, maximum=1.0)
    if remasking_strategy == "entropy_bounded":
        if eb_threshold is None:
            _fail("eb_threshold is required (a number > 0) for remasking_strategy='entropy_bounded'")
        check.real(_CALLER, "eb_threshold", eb_threshold, minimum=0.0, above=True)
    vocab_size = _vocab_size(model)
    where = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
    check.integer(_CALLER, "mask_id", mask_id, minimum=0)
    if vocab_size is not None and mask_id >= vocab_size:
        _fail(f"mask_id = {mask_id} is outside the model's vocabulary {where}")
    if stopping_criteria_idx is None:
        stop = []
    elif isinstance(stopping_criteria_idx, int) and not isinstance(stopping_criteria_idx, bool):
        stop = [stopping_criteria_idx]
    elif isinstance(stopping_criteria_idx, (Sequence, torch.Tensor)) and not isinstance(stopping_criteria_idx, str):
        stop = [int(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in stopping_criteria_idx]
    else:
        _fail(f"stopping_criteria_idx must be None, an int or a list of ints, "
              f"got {type(stopping_criteria_idx).__name__}", TypeError)
    for v in stop:
        check.integer(_CALLER, "stopping_criteria_idx", v, minimum=0)
        if vocab_size is not None and v >= vocab_size:
            _fail(f"stopping_criteria_idx holds {v}, outside the model's vocabulary {where}")
    if cache not in (None, "block"):
        _fail(f"cache must be 'block' or None, got {cache!r}")
    if backend is not None:
        check_backend_name(_CALLER, backend)
    keep = prompt.get("attention_mask")
    prompts = unpadded_prompts(_CALLER, ids, keep, ids_name="prompt['input_ids']",
                               mask_name="prompt['attention_mask']", mask_id=mask_id, vocab_size=vocab_size)
    if keep is not None:
        keep = keep.to(device=ids.device, dtype=torch.bool)
    return ids, keep, prompts, stop, vocab_size


def _selector(strategy, block_length, confidence_threshold, eb_threshold, backend):
    """``select_fn(stats, masked, n)`` of the strategy (None: the sampler's own rule,
    which is SDAR's ``low_confidence_dynamic``). No host read: it runs inside a step."""
    if strategy == "low_confidence_dynamic":
        # "every mask with confidence > threshold if there are at least n, else the n
        # most confident" = high | top n (the top n are all high when >= n are).
        return None
    if strategy == "low_confidence_static":
        return lambda stats, masked, n: ops.select_topk(stats.confidence, n, masked, backend=backend)
    if strategy == "sequential":
        order = {}

        def sequential(stats, masked, n):
            # The first n masks: select_topk on a score falling with the position.
            key = (masked.shape, masked.device)
            if key not in order:
                order[key] = (-torch.arange(masked.shape[-1], dtype=torch.float32, device=masked.device)
                              ).expand(masked.shape).contiguous()
            return ops.select_topk(order[key], n, masked, backend=backend)
        return sequential

    def entropy_bounded(stats, masked, n):
        # k = #prefix sums < eb_threshold over the masks' entropies ascending (ties by
        # position: a stable sort), clamped to [1, #masks]; see the module docstring
        # for why select_entropy_bounded's rule is not this one.
        h = torch.where(masked, stats.entropy.to(torch.float64), torch.inf)
        sums = torch.sort(h, dim=-1, stable=True).values.cumsum(-1)
        k = torch.minimum((sums < eb_threshold).sum(-1).clamp_min(1), masked.sum(-1))
        return ops.select_topk(-stats.entropy, k, masked, backend=backend)
    return entropy_bounded


@torch.no_grad()
def block_diffusion_generate(
        model,
        prompt,
        mask_id,
        gen_length=128,
        block_length=8,
        denoising_steps=8,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        remasking_strategy='low_confidence_dynamic',
        confidence_threshold=0.85,
        eb_threshold=None,
        stopping_criteria_idx=None,
        *,
        seed=None,
        backend=None,
        cache="block",
        block_causal=None,
):
    """SDAR's ``block_diffusion_generate``, batched, with the exact block KV cache
    and sync-free steps; see the module docstring. Returns int64 ``[B, T]``."""
    ids, keep, prompts, stop, vocab_size = _check_args(
        model, prompt, mask_id, gen_length, block_length, denoising_steps, temperature, top_k, top_p,
        remasking_strategy, confidence_threshold, eb_threshold, stopping_criteria_idx, cache, backend)
    if cache == "block":
        check_block_causal(model, _CALLER, block_causal)
    if seed is None:  # torch's default generator governs the noise (drawn on the host, before the steps)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0
    else:
        seed = check.integer(_CALLER, "seed", seed, minimum=0)
    if hasattr(model, "eval"):
        model.eval()  # as the public function
    device = _model_device(model, ids.device)
    prompts = [p.to(device=device, dtype=torch.int64) for p in prompts]
    eb = remasking_strategy == "entropy_bounded"
    # entropy_bounded ignores the schedule and may take one step per mask.
    schedule = [0] * block_length if eb else transfer_counts(block_length, denoising_steps)
    filler = 0 if mask_id != 0 else 1  # pads and columns past a row's canvas: never attended, never returned
    sampler = BlockDiffusionSampler(
        model, prompts, gen_length=gen_length, block_length=block_length, temperature=temperature, top_k=top_k,
        top_p=top_p, threshold=confidence_threshold, mask_id=mask_id, eos_id=None, version="2.0",
        schedule=schedule, cache=cache == "block", seed=seed, backend=backend, caller=_CALLER, filler=filler,
        vocab_size=vocab_size, select_fn=_selector(remasking_strategy, block_length, confidence_threshold,
                                                   eb_threshold, backend),
        stop_ids=torch.tensor(stop, dtype=torch.int64), masks_left_error=True,
        model_kwargs={"store_kv": True} if cache == "block" else None)
    sampler.run()
    L = sampler.layout
    B = L.B
    pads = [ids.shape[1] - p.shape[0] for p in prompts]
    width = max(p + (e - s) for p, s, e in zip(pads, L.start, L.end))
    out = torch.full((B, width), mask_id, dtype=torch.int64, device=device)
    for r in range(B):
        if pads[r]:
            out[r, :pads[r]] = ids[r][~keep[r]].to(device=device, dtype=torch.int64)
        out[r, pads[r]:pads[r] + L.end[r] - L.start[r]] = sampler.x[r, L.start[r]:L.end[r]]
    return out
