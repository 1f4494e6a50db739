"""Drop-in for LLaDA's ``generate.py``: ``from dmkernels.compat.llada import generate``."""
from __future__ import annotations

import torch

from .. import _checks
from ..constants import LLADA_EOS_ID, LLADA_EOT_ID, LLADA_MASK_ID
from ..policies import LowConfidence, Random
from ..sampler import Sampler, SamplerConfig

__all__ = ["generate", "EOS_ID", "EOT_ID"]

EOS_ID = LLADA_EOS_ID  # <|endoftext|> in LLaDA's vocabulary
EOT_ID = LLADA_EOT_ID  # <|eot_id|>


@torch.no_grad()
def generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
             cfg_scale=0., remasking='low_confidence', mask_id=LLADA_MASK_ID, logits_eos_inf=False,
             confidence_eos_eot_inf=False):
    """LLaDA's sampler, on dmkernels' fused ops. Same arguments, same returned canvas
    ``[B, prompt + gen_length]``; identical tokens at temperature 0, the same
    distribution when sampling (noise comes from dmkernels' seeded Philox stream and
    torch's default generator seeds it, so ``torch.manual_seed`` still governs).

    Differences from the public code, all on purpose:

    * ``confidence_eos_eot_inf``: the public line is a chained assignment that writes
      -inf into the EOS logit of the noisy logits and the EoT logit of the clean
      ones, after the tokens were chosen, so the EOS confidence is never
      suppressed. Here positions whose chosen token is EOS or EoT get confidence
      -inf, as Appendix B.4 describes: they are committed last.
    * Selection is restricted to the current block's masked positions, so a step
      never commits outside the block even when -inf confidences tie.
    * ``cfg_scale > 0`` without an attention mask works (the public code raises
      NameError there).
    * ``logits_eos_inf`` with a model whose vocabulary has no id 126081 is refused
      before the first model call when ``model.config.vocab_size`` says so, and
      on the first call otherwise (the public code raises IndexError there).
    """
    if remasking == 'low_confidence':
        policy = LowConfidence()
    elif remasking == 'random':
        policy = Random()
    else:
        raise NotImplementedError(remasking)

    caller = "compat.llada.generate"
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if logits_eos_inf and isinstance(vocab_size, int) and vocab_size <= EOS_ID:
        _checks.fail(caller, f"logits_eos_inf suppresses id {EOS_ID} (LLaDA's EOS), but the model's vocabulary "
                             f"has {vocab_size} ids")

    def logits_processor(step, rows):
        if rows.shape[-1] <= EOS_ID:  # a shape, known on the host: no sync
            _checks.fail(caller, f"logits_eos_inf suppresses id {EOS_ID} (LLaDA's EOS), but the model returned "
                                 f"{rows.shape[-1]} logits per position")
        rows[..., EOS_ID] = -torch.inf
        return rows

    def score_processor(stats):
        suppressed = (stats.token == EOS_ID) | (stats.token == EOT_ID)
        return stats._replace(confidence=stats.confidence.masked_fill(suppressed, -torch.inf))

    config = SamplerConfig(gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
                           cfg_scale=cfg_scale, mask_id=mask_id,
                           logits_processor=logits_processor if logits_eos_inf else None,
                           score_processor=score_processor if confidence_eos_eot_inf else None,
                           caller=caller, arg_names={"input_ids": "prompt"})
    return Sampler(model, prompt, policy, config, attention_mask=attention_mask).run().sequences
