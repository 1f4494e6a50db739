"""Eager reference of Fast-dLLM's LLaDA samplers (NVlabs/Fast-dLLM, llada/generate.py),
with the ``factor`` rule of the steven202/Fast-dLLM fork (``get_transfer_index_dynamic``).

All three return ``(x, nfe)``, ``nfe`` being the number of model calls made.
Batches of B >= 1 rows with prompts of equal length (no attention mask).

The blocks and the per-step counts are LLaDA's (see :mod:`dmkernels.bench.eager.llada`).
One step, on the rows of a window of the canvas:

- token ``x0``: argmax at T = 0, else LLaDA's float64 Gumbel-max sample;
- score: ``low_confidence``: probability of ``x0`` under ``softmax(logits)``
  computed in float64 (no temperature); ``random``: ``torch.rand`` (float32);
- eligible: the masked positions of the current block;
- selection per row, eligible positions ranked by score (highest first, equal
  scores to the lowest position):

  * default: the first ``count[i]`` of them (LLaDA's fixed counts);
  * ``threshold``: the first one always, and every other one whose score is
    ``>= threshold``;
  * ``factor`` (takes precedence over ``threshold``): with ``n`` eligible and
    sorted scores ``c_1 >= ... >= c_n``, find the first ``m >= 2`` with
    ``c_m < 1 - factor / (m + 1)`` (``m = 1`` always passes) and commit the
    ``m - 1`` before it; if none fails, commit all ``n``. The fork's loop has
    a quirk kept here: when the first failure is the *last* position
    (``m = n``), it commits all ``n`` as well.

  Scores are compared with the thresholds as torch compares a tensor with a
  Python float (float64 for ``low_confidence``).

Model calls:

- :func:`generate`: ``model(x)`` every step.
- :func:`generate_with_prefix_cache`: at the start of a block
  ``model(x, use_cache=True)``, whose logits also make the block's first step;
  its cache is cut to the positions before the block (``[:, :, :start]`` of
  every key and value); later steps call
  ``model(x[:, start:], past_key_values=cut, use_cache=True)``.
- :func:`generate_with_dual_cache`: the same block-start call, then
  ``model(x[:, start:end], past_key_values=cache, use_cache=True,
  replace_position=rp, replace_range=(start, end))`` with ``rp`` a bool
  ``[B, L]`` that is True on ``[start, end)``. (``replace_range`` is our
  shipped model's extension; the public model takes only ``replace_position``.)

Where the public code is buggy and this reference implements the intent:

- The cached samplers check whether the block is done only *after* each
  cached step. When the block-start step already finishes the block (one
  position per block, a threshold every score passes, ...), they make one
  wasted call; with one step per block and no threshold they even index the
  count table out of range. Here the check comes *before* every cached step:
  no call is made once the block is done, and ``nfe`` counts the calls made.
- The public prefix-cache loop draws the Gumbel noise twice per step (one
  draw unused); here it is drawn once. Only the random stream differs.
- Ties among equal scores go to the lowest position (``torch.topk`` leaves
  the order of ties unspecified).
- A committed token equal to ``mask_id`` (a model can predict the mask token;
  trained ones do not) leaves its position masked, so the block may not be
  done when its schedule is. The public loops then index past the count table
  (fixed counts) or never end (threshold / factor). Here a block makes at most
  ``steps // num_blocks`` calls with fixed counts and at most ``block_length``
  with a threshold or factor, and may end with masks left.
"""
from __future__ import annotations

import torch

from dmkernels.constants import LLADA_MASK_ID

from ._common import gumbel_argmax_float64, linear_counts, ranked


def _step(logits, x, eligible, temperature, remasking, count, threshold, factor):
    """One step on a window: returns (x0, commit) for that window."""
    x0 = gumbel_argmax_float64(logits, temperature)
    if remasking == 'low_confidence':
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        score = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    elif remasking == 'random':
        score = torch.rand(x0.shape, device=x0.device)
    else:
        raise NotImplementedError(remasking)

    commit = torch.zeros_like(eligible)
    for row in range(x.shape[0]):
        order = ranked(score[row], eligible[row])
        n = len(order)
        if n == 0:
            continue
        if factor is not None:
            take = n
            for m in range(1, n):  # m: 0-based rank; the threshold of rank m is 1 - factor / (m + 2)
                if bool(score[row, order[m]] < 1 - factor / (m + 2)):
                    take = m
                    break
            if take == n - 1:  # the fork's quirk: failing only at the last one commits everything
                take = n
            chosen = order[:take]
        elif threshold is not None:
            chosen = [order[0]] + [p for p in order[1:] if not bool(score[row, p] < threshold)]
        else:
            chosen = order[: int(count[row])]
        for pos in chosen:
            commit[row, pos] = True
    return torch.where(eligible, x0, x), commit


def _setup(prompt, steps, gen_length, block_length, mask_id):
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    return x, P, num_blocks, steps // num_blocks


def _more(x, start, end, mask_id, i, steps_per_block, block_length, threshold, factor):
    """Whether the block makes another call (step ``i``): it still has a mask, and the
    step budget is not spent (``steps_per_block`` with fixed counts, ``block_length``
    with a threshold or factor; reached only when the model predicts the mask token)."""
    budget = steps_per_block if (threshold is None and factor is None) else block_length
    return i < budget and bool((x[:, start:end] == mask_id).any())


def _count(counts, i, threshold, factor):
    return counts[:, i] if (threshold is None and factor is None) else None


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
             remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    x, P, num_blocks, steps_per_block = _setup(prompt, steps, gen_length, block_length, mask_id)
    nfe = 0
    for block in range(num_blocks):
        start = P + block * block_length
        end = start + block_length
        counts = linear_counts(x[:, start:end] == mask_id, steps_per_block)
        i = 0
        while _more(x, start, end, mask_id, i, steps_per_block, block_length, threshold, factor):
            logits = model(x).logits
            nfe += 1
            eligible = torch.zeros_like(x, dtype=torch.bool)
            eligible[:, start:end] = x[:, start:end] == mask_id
            x0, commit = _step(logits, x, eligible, temperature, remasking, _count(counts, i, threshold, factor),
                               threshold, factor)
            x[commit] = x0[commit]
            i += 1
    return x, nfe


@torch.no_grad()
def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                               remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    x, P, num_blocks, steps_per_block = _setup(prompt, steps, gen_length, block_length, mask_id)
    nfe = 0
    for block in range(num_blocks):
        start = P + block * block_length
        end = start + block_length
        counts = linear_counts(x[:, start:end] == mask_id, steps_per_block)

        out = model(x, use_cache=True)
        nfe += 1
        eligible = torch.zeros_like(x, dtype=torch.bool)
        eligible[:, start:end] = x[:, start:end] == mask_id
        x0, commit = _step(out.logits, x, eligible, temperature, remasking, _count(counts, 0, threshold, factor),
                           threshold, factor)
        x[commit] = x0[commit]
        prefix = [tuple(t[:, :, :start] for t in layer) for layer in out.past_key_values]

        i = 1
        while _more(x, start, end, mask_id, i, steps_per_block, block_length, threshold, factor):
            window = x[:, start:]
            logits = model(window, past_key_values=prefix, use_cache=True).logits
            nfe += 1
            eligible = torch.zeros_like(window, dtype=torch.bool)
            eligible[:, :block_length] = window[:, :block_length] == mask_id
            x0, commit = _step(logits, window, eligible, temperature, remasking,
                               _count(counts, i, threshold, factor), threshold, factor)
            x[:, start:] = torch.where(commit, x0, window)
            i += 1
    return x, nfe


@torch.no_grad()
def generate_with_dual_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                             remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    x, P, num_blocks, steps_per_block = _setup(prompt, steps, gen_length, block_length, mask_id)
    nfe = 0
    for block in range(num_blocks):
        start = P + block * block_length
        end = start + block_length
        counts = linear_counts(x[:, start:end] == mask_id, steps_per_block)

        out = model(x, use_cache=True)
        nfe += 1
        cache = out.past_key_values
        eligible = torch.zeros_like(x, dtype=torch.bool)
        eligible[:, start:end] = x[:, start:end] == mask_id
        x0, commit = _step(out.logits, x, eligible, temperature, remasking, _count(counts, 0, threshold, factor),
                           threshold, factor)
        x[commit] = x0[commit]

        replace_position = torch.zeros_like(x, dtype=torch.bool)
        replace_position[:, start:end] = True
        i = 1
        while _more(x, start, end, mask_id, i, steps_per_block, block_length, threshold, factor):
            window = x[:, start:end]
            logits = model(window, past_key_values=cache, use_cache=True, replace_position=replace_position,
                           replace_range=(start, end)).logits
            nfe += 1
            eligible = window == mask_id
            x0, commit = _step(logits, window, eligible, temperature, remasking,
                               _count(counts, i, threshold, factor), threshold, factor)
            x[:, start:end] = torch.where(commit, x0, window)
            i += 1
    return x, nfe
