"""Eager reference of LLaDA's ``generate`` (ML-GSAI/LLaDA, generate.py).

What it does, step by step, as the public sampler does it:

- The canvas is the prompt followed by ``gen_length`` masks; a 2-D
  ``attention_mask`` is extended with ones over the generated part. The
  generated part is split into ``gen_length // block_length`` blocks, each run
  for ``steps // num_blocks`` steps (both divisions must be exact).
- At the start of a block with ``n`` masks, step ``i`` of ``s`` is given
  ``n // s`` positions, plus one for the first ``n % s`` steps (per row).
- Each step calls ``model(x, attention_mask=...)`` (keyword, even when None).
  With ``cfg_scale > 0`` it calls the model once on the batch doubled with an
  unconditional copy in which every prompt position (every position that was
  not a mask at the start, padding included) is masked, and the attention mask
  doubled alike; the guided logits are ``u + (cfg_scale + 1) * (c - u)``.
- ``logits_eos_inf`` sets the logit of EOS (126081) to ``-inf`` (this also
  changes the confidences, computed from the same logits).
- The token ``x0`` is the argmax at T = 0, otherwise the float64 Gumbel-max
  sample ``argmax(exp(l) / (-log u) ** T)``.
- Scores: ``low_confidence``: the probability of ``x0`` under ``softmax(logits)``
  computed in the logits' dtype (float32 for our test models), without
  temperature; ``random``: ``torch.rand`` (float32).
- Each row commits its quota of the current block's masked positions with
  the highest scores; nothing outside the block and nothing already
  committed changes.

Where the public code is buggy and this reference implements the intent:

- ``confidence_eos_eot_inf``: the public line is a chained assignment that
  writes ``-inf`` into the noisy logits' EOS column and the (already used)
  logits' EoT column, so the confidences never see it. The documented intent
  (LLaDA paper, appendix B.4) is implemented: positions whose chosen token is
  EOS (126081) or EoT (126348) get confidence ``-inf``, so they are committed
  last.
- Positions with confidence ``-inf`` inside the block tie with every position
  outside the block (also ``-inf``), and the public per-row ``torch.topk`` may
  pick any of them. Here the selection is made among the current block's
  masked positions only: highest score first, equal scores (``-inf`` ones
  included) to the lowest position.
- With ``cfg_scale > 0`` and no attention mask, the public code reads an
  unassigned variable; here the model simply gets ``attention_mask=None``.

A chosen token equal to ``mask_id`` (an untrained model may predict it) is
written like any other and leaves the position masked, as in the public code.

Tokens are placed on ``prompt.device`` (the public code uses ``model.device``).
"""
from __future__ import annotations

import torch

from dmkernels.constants import LLADA_EOS_ID, LLADA_EOT_ID, LLADA_MASK_ID

from ._common import gumbel_argmax_float64, linear_counts, ranked

EOS_ID = LLADA_EOS_ID
EOT_ID = LLADA_EOT_ID


def _logits(model, x, attention_mask, prompt_index, cfg_scale, mask_id):
    if cfg_scale > 0.0:
        unconditional = x.clone()
        unconditional[prompt_index] = mask_id
        both = torch.cat([x, unconditional], dim=0)
        both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
        out = model(both, attention_mask=both_mask).logits
        cond, uncond = torch.chunk(out, 2, dim=0)
        return uncond + (cfg_scale + 1) * (cond - uncond)
    return model(x, attention_mask=attention_mask).logits


@torch.no_grad()
def generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
             cfg_scale=0., remasking='low_confidence', mask_id=LLADA_MASK_ID, logits_eos_inf=False,
             confidence_eos_eot_inf=False):
    B, P = prompt.shape
    device = prompt.device
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones((B, gen_length), dtype=attention_mask.dtype, device=device)], dim=-1)
    prompt_index = x != mask_id

    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks

    for block in range(num_blocks):
        start = P + block * block_length
        end = start + block_length
        counts = linear_counts(x[:, start:end] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            masked = x == mask_id
            logits = _logits(model, x, attention_mask, prompt_index, cfg_scale, mask_id)
            if logits_eos_inf:
                logits[:, :, EOS_ID] = -torch.inf

            x0 = gumbel_argmax_float64(logits, temperature)
            if remasking == 'low_confidence':
                probs = torch.softmax(logits, dim=-1)
                score = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
            elif remasking == 'random':
                score = torch.rand(x0.shape, device=x0.device)
            else:
                raise NotImplementedError(remasking)
            if confidence_eos_eot_inf:
                score = torch.where((x0 == EOS_ID) | (x0 == EOT_ID), -torch.inf, score)

            eligible = torch.zeros_like(masked)
            eligible[:, start:end] = masked[:, start:end]
            for row in range(B):
                chosen = ranked(score[row], eligible[row])[: int(counts[row, i])]
                for pos in chosen:
                    x[row, pos] = x0[row, pos]
    return x
