"""Drop-in for Fast-dLLM's ``llada/generate.py``:
``from dmkernels.compat.fast_dllm import generate, generate_with_prefix_cache, generate_with_dual_cache``.

All three return ``(x, nfe)``. ``threshold`` selects Fast-dLLM's confidence-aware
parallel decoding (every masked position of the block with confidence >= threshold,
at least the best one); ``factor`` its factor rule (takes precedence, as in the
public code). Without either, the block commits LLaDA's fixed counts.
"""
from __future__ import annotations

import torch

from ..constants import LLADA_MASK_ID
from . import build_policy
from ..policies import Factor, LowConfidence, Policy, Random, Threshold
from ..sampler import Sampler, SamplerConfig

__all__ = ["generate", "generate_with_prefix_cache", "generate_with_dual_cache"]


class _RandomConfidence(Policy):
    """remasking='random' with threshold/factor: the public code compares uniform noise
    with the threshold instead of the confidence."""

    needs_generator = True
    adaptive = True

    def __init__(self, inner: Policy):
        super().__init__()
        self.inner = inner

    def select(self, ctx):
        noise = torch.rand(ctx.eligible.shape, device=ctx.eligible.device, generator=ctx.generator)
        ctx.stats = ctx.stats._replace(confidence=noise)
        return self.inner.select(ctx)


def _policy(remasking, threshold, factor, caller) -> Policy:
    if remasking not in ('low_confidence', 'random'):
        raise NotImplementedError(remasking)
    if factor is None and threshold is None:
        return LowConfidence() if remasking == 'low_confidence' else Random()
    if factor is not None:
        policy = build_policy(caller, Factor, factor, fast_dllm_quirk=True)
    else:
        policy = build_policy(caller, Threshold, threshold)
    return policy if remasking == 'low_confidence' else _RandomConfidence(policy)


def _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor, cache,
         name):
    caller = f"compat.fast_dllm.{name}"
    config = SamplerConfig(gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
                           cache=cache, mask_id=mask_id, stop_when_block_done=True, caller=caller,
                           arg_names={"input_ids": "prompt"})
    out = Sampler(model, prompt, _policy(remasking, threshold, factor, caller), config).run()
    return out.sequences, out.model_calls


_NOTE = """
    Same arguments and ``(x, nfe)`` as Fast-dLLM. A block stops as soon as it has no
    mask left, checked before every model call; the public cached loops check only
    after their cached steps, so when the block-start call already finishes a block
    they make one more (wasted) call and count it, and with one step per block and
    no threshold they index past the schedule. Here ``nfe`` counts the calls made."""


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
             remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                None, "generate")


@torch.no_grad()
def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                               remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                "prefix", "generate_with_prefix_cache")


@torch.no_grad()
def generate_with_dual_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                             remasking='low_confidence', mask_id=LLADA_MASK_ID, threshold=None, factor=None):
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                "dual", "generate_with_dual_cache")


generate.__doc__ = "Fast-dLLM's ``generate`` (no cache)." + _NOTE
generate_with_prefix_cache.__doc__ = "Fast-dLLM's prefix-cache sampler." + _NOTE
generate_with_dual_cache.__doc__ = "Fast-dLLM's dual-cache sampler." + _NOTE
