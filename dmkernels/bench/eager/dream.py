"""Eager reference of Dream's ``diffusion_generate`` / ``_sample`` (Dream's
generation_utils.py; the copy in NVlabs/Fast-dLLM dream/model adds an extra
``confidence_threshold`` alg that is not reproduced here).

What it does, as Dream does it:

- Length: ``max_new_tokens`` wins (``max_length = input_len + max_new_tokens``);
  else an explicit ``max_length`` is the total length; else Dream's default of
  20 is counted as new tokens (``20 + input_len``, capped by
  ``model.config.max_position_embeddings`` when there is one). Dream cannot
  tell an explicit ``max_length=20`` from the default, so this signature uses
  ``max_length=None`` for "not given". ``input_len >= max_length`` is an error.
- The canvas is the input padded on the right with ``mask_token_id``.
- If an ``attention_mask`` is given and has a 0 somewhere, it is padded with
  ones, turned into position ids ``tok_idx = cumsum(mask) - 1`` (1 where the
  mask is 0) and into a 4-D bool ``[B, 1, N, N]`` mask (query and key both
  valid); otherwise the mask is the string ``"full"`` and ``tok_idx`` is None.
  The model is called positionally: ``model(x, attention_mask, tok_idx)``.
- Exactly ``steps`` model calls, even after no mask is left. The logits are
  shifted right by one (row 0 repeated), then passed through
  ``generation_logits_hook_func(i, x, logits)``;
  ``generation_tokens_hook_func`` is called with ``(None, x, None)`` before
  the loop and ``(i, x, logits)`` after every step, and its result is the new
  canvas.
- ``timesteps = linspace(1, eps, steps + 1)`` in float32; ``t, s`` the i-th and
  (i+1)-th.
- Tokens (``sample_tokens``) for the masked positions: logits divided by T
  when T > 0, then top-p, then top-k filtering (removed entries set to the
  dtype's finfo.min), softmax in the logits' dtype, then a categorical sample
  (T > 0, confidence = its probability) or the max (T = 0). ``topk_margin``
  replaces the confidence by top-1 minus top-2 probability, ``entropy`` by
  ``sum p log(p + 1e-10)`` (negative entropy).
- ``origin``: each masked position is drawn ``torch.rand < 1 - s / t`` (every one
  at the last step); drawn ones get a sampled token, the others stay masked.
- ``maskgit_plus`` / ``topk_margin`` / ``entropy``: ``k = int(m * (1 - s / t))``
  (``int(m)`` at the last step), ``m`` the batch-mean number of masks as a float32
  tensor; if ``k > 0`` each row commits the ``k`` masked positions with the
  highest confidence, or with ``alg_temp`` (not None, not 0) ``k`` positions drawn
  without replacement by ``torch.multinomial`` from ``softmax(conf / alg_temp)``
  over the row (``-inf`` outside masks).
- Returns the canvas, or with ``return_dict_in_generate`` an object with
  ``.sequences`` and ``.history`` (a list of the canvas after every step when
  ``output_history``, else None).

Where this differs from the public code (intent over accident):

- Top-k of the confidences is taken per row among the masked positions only,
  highest first, ties to the lowest position. Dream's batched ``torch.topk``
  over the whole row can, when a row has fewer masks than ``k`` (batch rows
  with different mask counts, e.g. through a tokens hook), pick unmasked
  positions and write the mask token over them.
- Sorting for top-p is stable (the order of tied logits is then defined).
- The categorical draw uses ``torch.multinomial`` (what
  ``torch.distributions.Categorical.sample`` does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._common import ranked


@dataclass
class DreamOutput:
    sequences: torch.Tensor
    history: list | None = None


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches
    ``top_p`` (the first token always); the rest get finfo.min."""
    ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    cumulative = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1)
    beyond = cumulative > top_p
    drop_sorted = torch.zeros_like(beyond)
    drop_sorted[..., 1:] = beyond[..., :-1]  # a token goes only if the mass before it already exceeds top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the tokens whose logit is at least the k-th largest; the rest get finfo.min."""
    top_k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False, neg_entropy=False):
    """(confidence, token) for each row of ``logits`` [N, V], as Dream's sample_tokens."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        token = torch.multinomial(probs, 1).squeeze(-1)
        confidence = torch.gather(probs, -1, token.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, token = probs.max(dim=-1)
    if margin_confidence:
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, token


def _keep_x(step, x, logits):
    return x


def _keep_logits(step, x, logits):
    return logits


@torch.no_grad()
def diffusion_generate(model, inputs, *, mask_token_id, steps=512, eps=1e-3, alg='origin', alg_temp=None,
                       temperature=0.0, top_p=None, top_k=None, max_new_tokens=None, max_length=None,
                       attention_mask=None, output_history=False, return_dict_in_generate=False,
                       generation_tokens_hook_func=None, generation_logits_hook_func=None):
    tokens_hook = generation_tokens_hook_func or _keep_x
    logits_hook = generation_logits_hook_func or _keep_logits
    input_len = inputs.shape[-1]
    if max_new_tokens is not None:
        max_length = input_len + max_new_tokens
    elif max_length is None:
        max_length = 20 + input_len
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if limit is not None:
            max_length = min(max_length, limit)
    if input_len >= max_length:
        raise ValueError(f"input length {input_len} >= max_length {max_length}")

    histories = [] if (return_dict_in_generate and output_history) else None
    x = F.pad(inputs, (0, max_length - input_len), value=mask_token_id)

    if attention_mask is not None and bool(torch.any(attention_mask == 0.0)):
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(attention_mask[:, None, None, :], attention_mask[:, None, :, None])
    else:
        tok_idx = None
        attention_mask = "full"

    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    x = tokens_hook(None, x, None)
    for i in range(steps):
        masked = x == mask_token_id
        logits = model(x, attention_mask, tok_idx).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits = logits_hook(i, x, logits)
        masked_logits = logits[masked]
        t = timesteps[i]
        s = timesteps[i + 1]

        if alg == 'origin':
            p_transfer = 1 - s / t if i < steps - 1 else 1
            new = torch.full((masked_logits.shape[0],), mask_token_id, dtype=torch.long, device=x.device)
            drawn = torch.rand(new.shape, device=x.device) < p_transfer
            if bool(drawn.any()):
                _, new[drawn] = sample_tokens(masked_logits[drawn], temperature=temperature, top_p=top_p,
                                              top_k=top_k)
            x[masked] = new
        else:
            if alg == 'maskgit_plus':
                confidence, x0 = sample_tokens(masked_logits, temperature, top_p=top_p, top_k=top_k)
            elif alg == 'topk_margin':
                confidence, x0 = sample_tokens(masked_logits, temperature, top_p=top_p, top_k=top_k,
                                               margin_confidence=True)
            elif alg == 'entropy':
                confidence, x0 = sample_tokens(masked_logits, temperature, top_p=top_p, top_k=top_k,
                                               neg_entropy=True)
            else:
                raise RuntimeError(f"Unknown alg: {alg}")
            mean_masked = masked.sum() / masked.shape[0]
            k = int(mean_masked * (1 - s / t)) if i < steps - 1 else int(mean_masked)
            full_confidence = torch.full(x.shape, -torch.inf, dtype=logits.dtype, device=x.device)
            full_confidence[masked] = confidence
            proposal = torch.full_like(x, mask_token_id)
            proposal[masked] = x0
            if k > 0:
                for row in range(x.shape[0]):
                    if alg_temp is None or alg_temp == 0:
                        chosen = ranked(full_confidence[row], masked[row])[:k]
                    else:
                        weights = torch.softmax(full_confidence[row] / alg_temp, dim=-1)
                        chosen = [int(p) for p in torch.multinomial(weights, num_samples=k)]
                    for pos in chosen:
                        x[row, pos] = proposal[row, pos]

        x = tokens_hook(i, x, logits)
        if histories is not None:
            histories.append(x.clone())

    if return_dict_in_generate:
        return DreamOutput(sequences=x, history=histories)
    return x
