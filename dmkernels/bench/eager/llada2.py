"""Eager references of LLaDA2.0's and LLaDA2.1's ``generate`` (the ``generate``
methods of ``LLaDA2MoeModelLM`` in the models' remote code), written in our own
words.

``generate(model, inputs, temperature=0.0, block_length=32, steps=32,
gen_length=2048, top_p=None, top_k=None, eos_early_stop=False, minimal_topk=1,
threshold=0.95, eos_id=156892, mask_id=156895)`` is LLaDA2.0's;
``generate_v21(..., editing_threshold=0.9, max_post_steps=16, eos_id=156892,
mask_id=156895, num_to_transfer=1)`` is LLaDA2.1's. ``model`` is any module
called as ``model(x, attention_mask=<4-D additive>, position_ids=...)`` whose
output has float ``.logits``.

What both do, for one prompt of length P:

- The canvas has ``T = ceil((P + gen_length) / block_length) * block_length``
  positions: the prompt, then ``mask_id``. Blocks are aligned at position 0 (the
  prompt is not padded), so the block holding the prompt's end also holds the
  first generated positions; generation starts with that block (block
  ``P // block_length``). Position ids are ``0..T-1``.
- Attention is block-causal: a query in block i sees the keys of blocks <= i.
- Every step calls the model on the whole window ``[0, end of the current
  block)`` (no cache) and samples every position of the current block from
  its float32 logits: greedy (temperature 0) takes the argmax and its softmax
  probability; otherwise the logits are divided by the temperature (when it is
  not 1), filtered by top-k (logits below the k-th largest become -inf, ties with
  it kept; ``None`` or ``<= 0`` = off) then top-p (sorted descending, the tokens
  after the one whose cumulative probability first exceeds p become -inf; ``None``
  or ``>= 1`` = off), and one ``torch.multinomial(probs, 1)`` call on the global
  generator draws all positions of the block; the confidence is the drawn
  token's probability under that filtered distribution.
- Commit (mask filling): among the block's masked positions, all whose
  confidence is strictly above ``threshold`` if there are at least ``n`` of them,
  otherwise the ``min(n, #masked)`` most confident. LLaDA2.0's ``n`` follows the
  schedule: ``block_length`` split over ``steps`` steps as evenly as possible (the
  first ``block_length % steps`` steps one more), with
  ``steps = min(steps, gen_length // minimal_topk)``, at most ``steps`` steps per
  block (a block may be left with masks), a block stops early once it has no
  mask. LLaDA2.1's ``n`` is ``num_to_transfer`` every step (``steps`` and
  ``minimal_topk`` are unused).
- LLaDA2.1 also edits: at every step, positions of the current block that are
  neither masked (before the step) nor prompt tokens get the sampled token when it
  differs from the current one and its confidence is strictly above
  ``editing_threshold``. A block loops until it has no mask and a step edits
  nothing, or until ``max_post_steps`` steps have started without a mask
  (checked before the model call, so at most ``max_post_steps`` such calls).
- A sampled token equal to ``mask_id`` is written like any other and leaves
  the position masked.
- The answer is the generated part up to and including the first ``eos_id`` in
  ``[P, P + gen_length)``, else all ``gen_length`` tokens (``[1, n]`` int64).
  LLaDA2.0 stops after any block whose generated part holds an EOS; with
  ``eos_early_stop`` it returns as soon as a step commits an EOS and no mask
  precedes the first EOS of the generated part. LLaDA2.1 with ``eos_early_stop``
  stops after a block when the generated part has no mask and holds an EOS.
  Neither changes the answer, only the work done (2.0 never rewrites a
  committed token, 2.1 only rewrites the current block).

Where the public code has a bug or quirk, and what is implemented here:

- **bf16 mask** (followed: intent). The public 2.0 and 2.1 build the block-causal
  mask in bfloat16 whatever the model dtype. With SDPA, torch refuses a bf16 mask
  for a float32/float64 query; LLaDA2.0's eager attention path also turns a 4-D
  0/-inf mask into a uniform one. The intended mask, 0/-inf in the model's dtype,
  is used here.
- **steps cap** (followed: code). ``steps = min(steps, gen_length //
  minimal_topk)``; the docstring's "minimal tokens per step" suggests
  ``block_length // minimal_topk``, but users get ``gen_length``. ``gen_length <
  minimal_topk`` gives 0 steps: nothing is generated and the answer is
  ``gen_length`` mask ids. ``minimal_topk <= 0`` (a ZeroDivisionError in public)
  raises ValueError here.
- **EOS search in the early return** (LLaDA2.0, followed: intent). The public early
  return looks for the first EOS from position 0, prompt included: a prompt that
  contains ``eos_id`` returns an empty answer. Here the search covers the
  generated part only.
- **early return past gen_length** (LLaDA2.0, followed: intent). When the first
  generated EOS lies in the last block's overhang ``[P + gen_length, T)``, the
  public early return hands back more than ``gen_length`` tokens; here the answer
  is capped at ``gen_length`` as documented (and as without ``eos_early_stop``).
- **greedy argmax** (followed: code). 2.0 takes the argmax of the softmax
  probabilities, 2.1 the argmax of the logits (they differ only when two logits
  round to the same probability).
- **ties** (followed: intent). Where fewer than ``n`` masked positions clear the
  threshold, the public code uses ``torch.topk`` (order of equal confidences
  unspecified); here the most confident are taken first and equal confidences
  go to the lowest position.
- **negative temperature**. The public code samples at temperature 1 (it divides
  only when the temperature is positive); here it raises ValueError.
- **LLaDA2.1 hang** (guarded). If the model keeps sampling ``mask_id`` at a masked
  position (or an edit writes it), the public loop never ends. A legitimate
  block needs at most ``block_length + max_post_steps`` model calls; past
  ``max_block_calls`` calls (default ``8 * (block_length + max_post_steps + 1)``)
  RuntimeError is raised. ``num_to_transfer <= 0`` (a hang in public when no
  mask clears the threshold) raises ValueError.

Batches (an extension: the public code takes one row). ``inputs`` may be
``[B, P]`` with an ``attention_mask`` (``[B, P]``, 0 = left padding): each row
runs alone on its unpadded prompt, one after the other (so with sampling the
rows draw from the global generator in turn). ``B = 1`` returns exactly the
public ``[1, n]``; ``B > 1`` returns ``[B, max n]``, each row right-padded with
``eos_id`` (its first EOS ends it).

Tokens are placed on ``inputs.device`` (the public code uses ``model.device``).

Cross-check (one-off, not in the test suite): on the tiny LLaDA2 config these
functions return the same tokens as the public 2.0 / 2.1 ``generate`` methods
(run under transformers 5.24 with import shims) for 72 greedy settings each
(prompts 3 / 8 / 13, block 4 / 8, steps 2 / 8, thresholds 0 / 0.5 / 0.95, early
stop on / off) in bf16 with the public bf16 mask, in float32 with that mask cast
to float32, and for 64 seeded sampling settings (temperature, top-k, top-p)
in float32.
"""
from __future__ import annotations

import torch

from dmkernels.constants import LLADA2_EOS_ID, LLADA2_MASK_ID

from ._common import ranked

__all__ = ["generate", "generate_v21", "transfer_schedule", "sample_tokens"]


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """How many masks each LLaDA2.0 step commits: ``block_length`` split as evenly
    as possible over ``steps`` steps, the first ``block_length % steps`` one more."""
    if steps == 0:
        return []
    base, extra = divmod(block_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _top_k(logits: torch.Tensor, k) -> torch.Tensor:
    if k is None or k <= 0:
        return logits
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, p) -> torch.Tensor:
    if p is None or p >= 1.0:
        return logits
    ordered, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    # Drop every token after the one that takes the mass past p (that one stays).
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_tokens(logits: torch.Tensor, temperature, top_k, top_p, *, argmax_of_logits: bool):
    """Tokens and confidences ``[n]`` for float logits ``[n, V]``, as LLaDA2 samples
    them (see the module docstring); ``argmax_of_logits``: 2.1's greedy rule."""
    if temperature == 0.0:
        probs = torch.softmax(logits, dim=-1)
        token = (logits if argmax_of_logits else probs).argmax(dim=-1)
        return token, probs.gather(-1, token[:, None])[:, 0]
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(_top_p(_top_k(logits, top_k), top_p), dim=-1)
    token = torch.multinomial(probs, num_samples=1)
    return token[:, 0], probs.gather(-1, token)[:, 0]


def _model_dtype(model) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


class _Canvas:
    """One row's canvas, block-causal mask and positions."""

    def __init__(self, model, prompt: torch.Tensor, gen_length: int, block_length: int, mask_id: int):
        self.P = prompt.shape[0]
        self.bl = block_length
        self.gen_length = gen_length
        self.num_blocks = -(-(self.P + gen_length) // block_length)
        total = self.num_blocks * block_length
        device = prompt.device
        self.x = torch.full((total,), mask_id, dtype=torch.long, device=device)
        self.x[: self.P] = prompt
        block = torch.arange(total, device=device) // block_length
        keep = block[None, :] <= block[:, None]
        self.mask = torch.zeros((total, total), dtype=_model_dtype(model), device=device)
        self.mask = self.mask.masked_fill(~keep, float("-inf"))[None, None]
        self.positions = torch.arange(total, device=device)[None]

    def logits(self, model, end: int) -> torch.Tensor:
        """float32 logits ``[block_length, V]`` of the block ending at ``end``,
        computed on the whole window ``[0, end)``."""
        out = model(self.x[None, :end], attention_mask=self.mask[:, :, :end, :end],
                    position_ids=self.positions[:, :end])
        return out.logits[0, end - self.bl: end].float()

    def answer(self, eos_id: int) -> torch.Tensor:
        """``[P, P + gen_length)`` up to and including the first EOS."""
        generated = self.x[self.P: self.P + self.gen_length]
        hits = (generated == eos_id).nonzero()
        n = int(hits[0, 0]) + 1 if len(hits) else self.gen_length
        return generated[:n]


def _fill(conf: torch.Tensor, masked: torch.Tensor, threshold: float, n: int) -> torch.Tensor:
    """Masked positions to commit: all above ``threshold`` if at least ``n``, else the
    ``min(n, #masked)`` most confident (ties to the lowest position)."""
    high = masked & (conf > threshold)
    if int(high.sum()) >= n:
        return high
    chosen = torch.zeros_like(masked)
    for pos in ranked(conf, masked)[:n]:
        chosen[pos] = True
    return chosen


def _row_v20(model, prompt, temperature, block_length, steps, gen_length, top_p, top_k, eos_early_stop,
             minimal_topk, threshold, eos_id, mask_id):
    c = _Canvas(model, prompt, gen_length, block_length, mask_id)
    P = c.P
    schedule = transfer_schedule(block_length, min(steps, gen_length // minimal_topk))
    for block in range(P // block_length, c.num_blocks):
        end = (block + 1) * block_length
        cur = c.x[end - block_length: end]  # a view: writes reach the canvas
        for n in schedule:
            masked = cur == mask_id
            if not masked.any():
                break
            token, conf = sample_tokens(c.logits(model, end), temperature, top_k, top_p, argmax_of_logits=False)
            chosen = _fill(conf, masked, threshold, n)
            cur[chosen] = token[chosen]
            if eos_early_stop and (token[chosen] == eos_id).any():
                generated = c.x[P:end]
                first = (generated == eos_id).nonzero()
                if len(first) and not (generated[: int(first[0, 0])] == mask_id).any():
                    return c.answer(eos_id)
        if (c.x[P:end] == eos_id).any():
            break
    return c.answer(eos_id)


def _row_v21(model, prompt, temperature, block_length, gen_length, top_p, top_k, eos_early_stop, threshold,
             editing_threshold, max_post_steps, eos_id, mask_id, num_to_transfer, max_block_calls):
    c = _Canvas(model, prompt, gen_length, block_length, mask_id)
    P = c.P
    for block in range(P // block_length, c.num_blocks):
        start, end = block * block_length, (block + 1) * block_length
        cur = c.x[start:end]
        prompt_here = torch.arange(start, end, device=cur.device) < P
        post_steps = 0
        calls = 0
        while True:
            before = cur.clone()
            masked = before == mask_id
            if not masked.any():
                post_steps += 1
            if post_steps > max_post_steps:
                break
            calls += 1
            if calls > max_block_calls:
                raise RuntimeError(
                    f"eager LLaDA2.1 generate: block {block} still changing after {max_block_calls} model calls "
                    f"(the model keeps producing mask_id {mask_id}?); the public loop would never end")
            token, conf = sample_tokens(c.logits(model, end), temperature, top_k, top_p, argmax_of_logits=True)
            chosen = _fill(conf, masked, threshold, num_to_transfer) if masked.any() else torch.zeros_like(masked)
            edit = ~masked & ~prompt_here & (conf > editing_threshold) & (token != before)
            write = chosen | edit
            cur[write] = token[write]
            if not masked.any() and not edit.any():
                break
        if eos_early_stop:
            generated = c.x[P:end]
            if not (generated == mask_id).any() and (generated == eos_id).any():
                break
    return c.answer(eos_id)


def _rows(inputs: torch.Tensor, attention_mask):
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be [B, P], got {list(inputs.shape)}")
    if attention_mask is None:
        return list(inputs)
    keep = attention_mask.to(device=inputs.device, dtype=torch.bool)
    return [row[k] for row, k in zip(inputs, keep)]


def _stack(answers: list[torch.Tensor], eos_id: int) -> torch.Tensor:
    if len(answers) == 1:
        return answers[0][None]
    width = max(a.shape[0] for a in answers)
    out = torch.full((len(answers), width), eos_id, dtype=torch.long, device=answers[0].device)
    for r, a in enumerate(answers):
        out[r, : a.shape[0]] = a
    return out


def _check_common(temperature, block_length, gen_length, minimal_topk):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if block_length <= 0:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    if gen_length <= 0:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if minimal_topk <= 0:
        raise ValueError(f"minimal_topk must be >= 1, got {minimal_topk}")


@torch.no_grad()
def generate(model, inputs, temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None, top_k=None,
             eos_early_stop=False, minimal_topk=1, threshold=0.95, eos_id=LLADA2_EOS_ID, mask_id=LLADA2_MASK_ID,
             *, attention_mask=None):
    """LLaDA2.0's ``generate`` (see the module docstring); ``attention_mask`` is the
    batch extension (left padding)."""
    _check_common(temperature, block_length, gen_length, minimal_topk)
    answers = [
        _row_v20(model, row, temperature, block_length, steps, gen_length, top_p, top_k, eos_early_stop,
                 minimal_topk, threshold, eos_id, mask_id)
        for row in _rows(inputs, attention_mask)
    ]
    return _stack(answers, eos_id)


@torch.no_grad()
def generate_v21(model, inputs, temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None, top_k=None,
                 eos_early_stop=False, minimal_topk=1, threshold=0.95, editing_threshold=0.9, max_post_steps=16,
                 eos_id=LLADA2_EOS_ID, mask_id=LLADA2_MASK_ID, num_to_transfer=1, *, attention_mask=None,
                 max_block_calls=None):
    """LLaDA2.1's ``generate`` (see the module docstring); ``steps`` and
    ``minimal_topk`` are unused as in public (``minimal_topk`` must still be >= 1);
    ``attention_mask`` is the batch extension; ``max_block_calls`` the hang guard."""
    _check_common(temperature, block_length, gen_length, minimal_topk)
    if num_to_transfer <= 0:
        raise ValueError(f"num_to_transfer must be >= 1, got {num_to_transfer}")
    if max_block_calls is None:
        max_block_calls = 8 * (block_length + max_post_steps + 1)
    answers = [
        _row_v21(model, row, temperature, block_length, gen_length, top_p, top_k, eos_early_stop, threshold,
                 editing_threshold, max_post_steps, eos_id, mask_id, num_to_transfer, max_block_calls)
        for row in _rows(inputs, attention_mask)
    ]
    return _stack(answers, eos_id)
