"""Reference denoise_stats: what a uniform-state diffusion step (DiffusionGemma)
needs from each position's logits, in one op.

- ``token``: the Gumbel-max sample of ``softmax(x * float32(1 / T))``; by
  definition ``token_stats(temperature=T, tempered_scores=True).token`` (the same
  hierarchical sampler and noise, csrc/common/noise.h).
- ``entropy``: token_stats' tempered entropy (nats, float32, clamped >= 0).
- ``argmax``: the first index of the maximum of ``z = (x.float() / T32).to(x.dtype)``,
  T32 the temperature rounded to float32 and ``/`` an IEEE (correctly rounded)
  float32 division: exactly ``torch.argmax(logits / T, -1)`` as transformers'
  temperature processor computes it. The sampler keeps the multiply by
  float32(1 / T) (one ulp away from x / T) so that tokens stay token_stats'.
- ``processed_out`` (optional, written in place): ``z.to(processed_out.dtype)``,
  frozen rows untouched.

A frozen row gets token -1, argmax -1, entropy +inf and costs nothing. A row
with no distribution (token_stats' token -1: a NaN or +inf logit, only -inf, or
``x / T`` overflowing float32) gets token -1, argmax -1, entropy NaN; its
``processed_out`` row is still written.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .token_stats import token_stats_reference


class DenoiseStats(NamedTuple):
    """Per-position outputs of denoise_stats (all shaped ``logits.shape[:-1]``).

    token: int64, the sample of softmax(x / T); -1 for frozen rows and rows with
        no distribution.
    argmax: int64, first index of the max of ``logits / T`` (IEEE division,
        rounded to the logits' dtype); -1 where token is -1.
    entropy: float32, entropy in nats of softmax(x / T); +inf for frozen rows,
        NaN for rows with no distribution.
    """

    token: torch.Tensor
    argmax: torch.Tensor
    entropy: torch.Tensor


def temperature_values(temperature) -> tuple[float, float]:
    """(T as the sampler takes it, T rounded to float32 for the division).

    A Python float keeps its double value for ``inv_t = float32(1 / T)`` (as
    token_stats); a 0-d float32 tensor is already float32."""
    if isinstance(temperature, torch.Tensor):
        t32 = float(temperature.detach().to("cpu", torch.float32))
        return t32, t32
    t = float(temperature)
    return t, float(torch.tensor(t, dtype=torch.float32))


def denoise_stats_reference(
    logits: torch.Tensor,
    temperature,
    *,
    seed: int = 0,
    offset: int = 0,
    processed_out: torch.Tensor | None = None,
    frozen: torch.Tensor | None = None,
) -> DenoiseStats:
    t_sample, t32 = temperature_values(temperature)
    positions = None if frozen is None else ~frozen
    stats = token_stats_reference(logits, temperature=t_sample, seed=seed, offset=offset, positions=positions,
                                  tempered_scores=True)
    lead, V = logits.shape[:-1], logits.shape[-1]
    # float32 / float32 0-d tensor: torch's true division, IEEE on every CPU.
    z = (logits.to(torch.float32) / torch.tensor(t32, dtype=torch.float32, device=logits.device)).to(logits.dtype)
    argmax = z.reshape(-1, V).argmax(-1).reshape(lead)
    argmax = torch.where(stats.token < 0, -1, argmax)  # frozen or no distribution
    if processed_out is not None:
        keep = frozen if frozen is not None else torch.zeros(lead, dtype=torch.bool, device=logits.device)
        processed_out.copy_(torch.where(keep.unsqueeze(-1), processed_out, z.to(processed_out.dtype)))
    return DenoiseStats(stats.token, argmax, stats.entropy)
