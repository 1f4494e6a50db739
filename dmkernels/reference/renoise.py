"""Reference renoise_: the canvas update of a uniform-state diffusion step.

DiffusionGemma (transformers' ``EntropyBoundSampler``) keeps the accepted
positions' sampled tokens and replaces every other position with a uniform
random token over the whole vocabulary; rows that have finished denoising keep
their canvas. Elementwise over [B, L]:

    canvas[b, l] = canvas[b, l]  if frozen[b]
                   sample[b, l]  elif accept[b, l]
                   U[0, V)       otherwise

The random token of position (b, l) is a pure function of (seed, offset,
b * L + l): renoise_'s Philox stream of csrc/common/noise.h
(:func:`dmkernels.reference.noise.uniform_tokens`), so every backend writes the
same tokens. ``sample`` is written as given (cast to the canvas's dtype).
"""
from __future__ import annotations

import torch

from .noise import uniform_tokens


def renoise_reference(
    canvas: torch.Tensor,
    sample: torch.Tensor,
    accept: torch.Tensor,
    frozen: torch.Tensor | None,
    vocab_size: int,
    seed: int,
    offset: int,
) -> torch.Tensor:
    """Re-noise ``canvas`` in place; returns the number of random tokens written per
    row (int64 [B]; 0 for a frozen row)."""
    B, L = canvas.shape
    flat = torch.arange(B * L, dtype=torch.int64, device=canvas.device).reshape(B, L)
    noise = uniform_tokens(seed, offset, flat, vocab_size)
    live = torch.ones(B, dtype=torch.bool, device=canvas.device) if frozen is None else ~frozen
    new = torch.where(accept, sample.to(torch.int64), noise)
    canvas.copy_(torch.where(live[:, None], new, canvas.to(torch.int64)).to(canvas.dtype))
    return ((~accept) & live[:, None]).sum(-1)
