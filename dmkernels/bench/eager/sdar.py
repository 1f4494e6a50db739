"""Eager reference of SDAR's ``block_diffusion_generate`` (JetAstra/SDAR, generate.py).

What it does, as the public sampler does it (one prompt row):

- The canvas is ``T = ceil((P + gen_length) / block_length) * block_length``
  tokens: the prompt, then ``mask_id``. Blocks are aligned at position 0, so the
  block holding the prompt's tail also holds the first masks. Attention is
  block-causal: a float 0/1 mask ``[1, T, T]`` (query block >= key block),
  position ids ``0 .. T-1``.
- ``model.eval()``; a ``transformers`` ``DynamicCache``. The prompt's full blocks
  are run once with ``store_kv=True`` (their keys and values are appended; the
  logits are discarded).
- Block ``b`` (from the one holding position ``P``): each denoising step calls
  the model on the block's ``block_length`` tokens with ``store_kv=False``
  (attending to the cache and to the block itself, storing nothing), samples a
  token and its probability at every position of the block, and commits some
  masked positions. When the block has no mask left, one more call with
  ``store_kv=True`` appends the block's final keys and values, and the block is
  done. Step ``i`` may commit ``n_i`` positions: ``block_length`` split evenly
  over ``denoising_steps``, the first ``block_length % denoising_steps`` steps
  taking one more (the schedule is over the block length, not over the masks
  the block actually has).
- Sampling: ``logits / temperature`` (when ``temperature != 1``), top-k
  (``top_k > 0``: logits below the k-th largest -> -inf, ties kept), top-p
  (``top_p < 1``: sorted descending, drop the tokens after the one whose
  cumulative probability first exceeds ``top_p``; the top token always stays),
  ``softmax`` in the logits' dtype, one ``torch.multinomial(probs, 1)`` call on
  the global generator per denoising step over all ``block_length`` positions;
  the confidence ``x0_p`` is the drawn token's probability under that
  (tempered, filtered) distribution.
- Strategies (``n = n_i``, among the block's masked positions):
  ``sequential``: the first ``n``; ``low_confidence_static``: the ``n`` most
  confident; ``low_confidence_dynamic``: every one with confidence
  ``> confidence_threshold`` if there are at least ``n`` of them, else the ``n``
  most confident; ``entropy_bounded``: see below.
- After a block, generation stops if any id of ``stopping_criteria_idx``
  occurs in the generated part of the canvas. Returns the whole canvas
  ``[1, T]`` (prompt included; blocks never reached keep ``mask_id``).

Where the public code is buggy or undefined and this reference follows the
intent instead:

- **Greedy.** ``temperature=0`` divides the logits by zero and
  ``torch.multinomial`` then raises. Here ``temperature == 0`` means greedy, as
  in LLaDA2 and SDAR's own opencompass sampler: the token is the argmax of the
  logits (lowest index on ties), its confidence ``softmax(logits)`` at the
  token (temperature 1, no top-k / top-p filtering), and no random number is
  drawn.
- **top-k over non-masked positions.** ``low_confidence_static`` (and
  ``low_confidence_dynamic`` when it falls back to top-k) takes ``n`` positions
  by ``torch.topk`` over confidences that are -inf outside the masks, with ``n``
  not capped by the number of masks. With fewer masks than ``n`` (the first
  block, which holds prompt tokens; or after a dynamic step committed many) it
  also picks non-masked positions and overwrites **prompt tokens or committed
  tokens** with fresh samples. Here only masked positions are chosen: the
  ``min(n, #masks)`` most confident.
- **Ties.** ``torch.topk`` and ``torch.sort`` order equal scores in an
  unspecified way. Here: highest confidence first (lowest entropy first for
  ``entropy_bounded``), equal scores to the lowest position.
- **sequential** commits ``[f, f + n)`` from the first mask ``f``, which covers
  committed tokens when the masks are not contiguous (only possible after the
  model sampled ``mask_id``, see below). Here: the first ``min(n, #masks)``
  masked positions (the same whenever the masks are contiguous).
- **entropy_bounded** never initialises its ``transfer_index`` (an
  ``UnboundLocalError`` at the first step) and computes
  ``-(p * log p).sum(-1)`` with ``p`` the ``[B, block]`` chosen-token
  probabilities, one number per row, so every masked position ties. The
  ``.sum(dim=-1)`` shows the intent of the EB-sampler: the entropy of each
  position's distribution over the vocabulary. Here: ``H`` = the entropy (nats,
  ``0 log 0 = 0``, no epsilon clamp) of the distribution the token was drawn
  from (tempered and filtered; at temperature 0 ``softmax(logits)``), in the
  logits' dtype; the masked positions sorted by ``H`` ascending, ``cumsum``,
  ``k`` = how many prefix sums are ``< eb_threshold``, clamped to
  ``[1, #masks]``; those ``k`` are committed. (A token-only reading,
  ``-x0_p log x0_p`` per position, would also fix the crash but is not the
  EB-sampler.) ``eb_threshold=None`` with this strategy raises ``ValueError``
  (public: a ``TypeError`` inside ``torch.tensor(None)``).
- **entropy_bounded step count.** The public loop runs at most
  ``denoising_steps + 1`` forwards per block; ``entropy_bounded`` commits as
  few as one position per step, so a block could end with masks, never get its
  ``store_kv`` call, and be missing from the cache for every later block. Here
  an ``entropy_bounded`` block runs until it has no mask left (at most one step
  per mask; the schedule is not used).
- **A model that samples ``mask_id``.** Committing it leaves the position
  masked, as in the public code. If masks remain after ``denoising_steps``
  steps (``block_length`` steps for ``entropy_bounded``), the public code
  raises ``IndexError`` (schedule exhausted); here ``RuntimeError`` says why.
  Trained models never predict the mask; the test models suppress its logit.
- **Batches.** The public sampler builds a one-row canvas and cannot take
  ``B > 1``; it also ignores ``prompt['attention_mask']``. Here each row is
  generated alone (its own cache and random draws, its own stopping criterion),
  which is what a row gets from the public code when run by itself. As an
  extension, a ``prompt['attention_mask']`` with zeros marks padding: the row's
  prompt is its kept tokens. The result for ``B > 1`` (or any padding) is
  ``[B, W]``: row ``r`` is its input's padding positions (unchanged), then its
  own canvas, then ``mask_id`` up to ``W = max_r(pads_r + T_r)``. Without
  padding all rows have the same ``T`` and the result is their canvases
  stacked; ``B = 1`` without padding returns exactly the public ``[1, T]``.
- ``denoising_steps <= 0`` (public: ``ZeroDivisionError``),
  ``block_length <= 0`` and an unknown ``remasking_strategy`` (public: a
  ``ValueError`` after the prefill) raise ``ValueError`` before any model call.
  ``stopping_criteria_idx`` may also be a single int (public: ``TypeError``).

Tokens are placed on ``input_ids.device`` (the public code uses ``model.device``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from ._common import ranked

STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded")


def transfer_counts(block_length: int, steps: int) -> list[int]:
    """SDAR's schedule: ``block_length`` split over ``steps``, the first
    ``block_length % steps`` steps taking one more."""
    return [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]


def _top_k(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens ranked above it already exceed p (so the one
    # crossing p stays, and so does the top token).
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_block(logits, temperature, top_k, top_p):
    """``(x0, x0_p, probs)`` for logits ``[1, L, V]``: the token of every position,
    its probability, and the distribution it was drawn from (``[1, L, V]``, the
    logits' dtype)."""
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if temperature == 0:
        probs = F.softmax(flat, dim=-1)
        token = flat.argmax(dim=-1, keepdim=True)
    else:
        if temperature != 1.0:
            flat = flat / temperature
        if top_k > 0:
            flat = _top_k(flat, top_k)
        if top_p < 1.0:
            flat = _top_p(flat, top_p)
        probs = F.softmax(flat, dim=-1)
        token = torch.multinomial(probs, num_samples=1)
    token_p = torch.gather(probs, -1, token)
    return token.view(lead), token_p.view(lead), probs.view(*lead, vocab)


def _choose(strategy, masked, x0_p, probs, n, confidence_threshold, eb_threshold) -> list[int]:
    """Positions (of one row of the block) to commit this step."""
    n_masks = int(masked.sum())
    if strategy == "sequential":
        return [int(p) for p in masked.nonzero().flatten()[:n]]
    if strategy == "low_confidence_static":
        return ranked(x0_p, masked)[: min(n, n_masks)]
    if strategy == "low_confidence_dynamic":
        high = masked & (x0_p > confidence_threshold)
        if int(high.sum()) >= n:
            return [int(p) for p in high.nonzero().flatten()]
        return ranked(x0_p, masked)[: min(n, n_masks)]
    # entropy_bounded
    entropy = torch.special.entr(probs).sum(dim=-1)
    order = ranked(entropy, masked, descending=False)
    sums = torch.cumsum(entropy[order], dim=0)
    k = int(torch.searchsorted(sums, torch.tensor(eb_threshold, dtype=sums.dtype), right=False))
    return order[: max(1, min(k, n_masks))]


def _generate_row(model, ids, mask_id, gen_length, block_length, denoising_steps, temperature, top_k, top_p,
                  strategy, confidence_threshold, eb_threshold, stop_ids, cached):
    """One prompt row ``ids`` ``[1, P]`` -> its canvas ``[1, T]``. ``cached=False``
    recomputes the whole window ``[0, block end)`` at every step instead of using
    the cache (a check of the cache's exactness, not the public algorithm)."""
    device = ids.device
    P = ids.shape[1]
    num_blocks = (P + gen_length + block_length - 1) // block_length
    T = num_blocks * block_length
    block_mask = torch.tril(torch.ones(num_blocks, num_blocks, device=device))
    visible = block_mask.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)[None]
    positions = torch.arange(T, device=device)[None]
    x = torch.full((1, T), mask_id, dtype=torch.long, device=device)
    x[:, :P] = ids

    cache = DynamicCache() if cached else None
    first = P // block_length
    if cached and first > 0:
        end = first * block_length
        model(x[:, :end], attention_mask=visible[:, :end, :end], position_ids=positions[:, :end],
              past_key_values=cache, use_cache=True, store_kv=True)

    counts = transfer_counts(block_length, denoising_steps)
    max_steps = block_length if strategy == "entropy_bounded" else denoising_steps
    for block in range(first, num_blocks):
        s, e = block * block_length, (block + 1) * block_length
        cur = x[:, s:e].clone()
        step = 0
        while True:
            masked = cur[0] == mask_id
            if not bool(masked.any()):
                if cached:  # the block's final keys and values
                    model(cur, attention_mask=visible[:, s:e, :e], position_ids=positions[:, s:e],
                          past_key_values=cache, use_cache=True, store_kv=True)
                break
            if step >= max_steps:
                raise RuntimeError(
                    f"block_diffusion_generate: block {block} still has {int(masked.sum())} masks after {step} "
                    f"steps: the model sampled mask_id ({mask_id}) (the public code raises IndexError here)"
                )
            if cached:
                logits = model(cur, attention_mask=visible[:, s:e, :e], position_ids=positions[:, s:e],
                               past_key_values=cache, use_cache=True, store_kv=False).logits
            else:
                window = torch.cat([x[:, :s], cur], dim=1)
                logits = model(window, attention_mask=visible[:, :e, :e], position_ids=positions[:, :e]).logits[:, s:e]
            x0, x0_p, probs = sample_block(logits, temperature, top_k, top_p)
            n = counts[step] if step < len(counts) else 0
            for pos in _choose(strategy, masked, x0_p[0], probs[0], n, confidence_threshold, eb_threshold):
                cur[0, pos] = x0[0, pos]
            step += 1
        x[:, s:e] = cur
        if stop_ids and any(bool((x[0, P:] == sid).any()) for sid in stop_ids):
            break
    return x


def _generate(model, prompt, mask_id, gen_length, block_length, denoising_steps, temperature, top_k, top_p,
              remasking_strategy, confidence_threshold, eb_threshold, stopping_criteria_idx, cached):
    if not isinstance(prompt, Mapping) or "input_ids" not in prompt:
        raise TypeError("block_diffusion_generate: prompt must be a dict with 'input_ids' (as SDAR's generate.py)")
    if remasking_strategy not in STRATEGIES:
        raise ValueError(f"block_diffusion_generate: unknown remasking_strategy {remasking_strategy!r}; "
                         f"expected one of {STRATEGIES}")
    if remasking_strategy == "entropy_bounded" and eb_threshold is None:
        raise ValueError("block_diffusion_generate: eb_threshold is required for remasking_strategy='entropy_bounded'")
    if denoising_steps <= 0:
        raise ValueError(f"block_diffusion_generate: denoising_steps must be >= 1, got {denoising_steps}")
    if block_length <= 0:
        raise ValueError(f"block_diffusion_generate: block_length must be >= 1, got {block_length}")
    stop_ids = [stopping_criteria_idx] if isinstance(stopping_criteria_idx, int) else stopping_criteria_idx
    input_ids = prompt["input_ids"]
    keep = prompt.get("attention_mask")
    B = input_ids.shape[0]
    padded = keep is not None and not bool(keep.bool().all())

    model.eval()
    rows = []
    for r in range(B):
        ids = input_ids[r:r + 1] if not padded else input_ids[r][keep[r].bool()][None]
        rows.append(_generate_row(model, ids, mask_id, gen_length, block_length, denoising_steps, temperature, top_k,
                                  top_p, remasking_strategy, confidence_threshold, eb_threshold, stop_ids, cached))
    if not padded:
        return torch.cat(rows, dim=0)
    pads = [int((~keep[r].bool()).sum()) for r in range(B)]
    width = max(p + row.shape[1] for p, row in zip(pads, rows))
    out = torch.full((B, width), mask_id, dtype=torch.long, device=input_ids.device)
    for r, (p, row) in enumerate(zip(pads, rows)):
        out[r, :p] = input_ids[r][~keep[r].bool()]
        out[r, p:p + row.shape[1]] = row[0]
    return out


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
        stopping_criteria_idx=None
):
    return _generate(model, prompt, mask_id, gen_length, block_length, denoising_steps, temperature, top_k, top_p,
                     remasking_strategy, confidence_threshold, eb_threshold, stopping_criteria_idx, cached=True)


@torch.no_grad()
def block_diffusion_generate_uncached(model, prompt, mask_id, **kwargs):
    """The same algorithm with every step recomputing the window ``[0, block
    end)`` (no cache, no ``store_kv``): in exact arithmetic it gives the same
    logits as the cached run, which tests check in float64."""
    args = dict(gen_length=128, block_length=8, denoising_steps=8, temperature=1.0, top_k=0, top_p=1.0,
                remasking_strategy='low_confidence_dynamic', confidence_threshold=0.85, eb_threshold=None,
                stopping_criteria_idx=None)
    unknown = set(kwargs) - set(args)
    if unknown:
        raise TypeError(f"block_diffusion_generate_uncached: unexpected arguments {sorted(unknown)}")
    args.update(kwargs)
    return _generate(model, prompt, mask_id, cached=False, **args)
