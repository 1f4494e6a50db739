"""Reference token_stats: float64 softmax statistics, float32 Gumbel-max sampling.

Ground truth for the kernels. The scores are exact float64 functions of the
(float32-converted) logits; the sampled token uses the float32 arithmetic every
backend shares (hierarchical Gumbel-max over noise groups of 32 columns on
``x * c``, see csrc/common/noise.h and ``noise.hierarchical_sample``) so that
tokens match bit for bit. It allocates several copies of the logits: it is for tests and
for the no-extension fallback, not for speed.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import MIN_TEMPERATURE  # noqa: F401  (the smallest T > 0 the ops accept; defined once)
from .noise import hierarchical_sample


class TokenStats(NamedTuple):
    """Per-position statistics of a token distribution (all shaped like ``logits.shape[:-1]``).

    token: int64, the argmax (temperature 0) or the Gumbel-max sample; -1 where
        the row was not requested or has no distribution.
    confidence: float32, probability of ``token``.
    margin: float32, top-1 minus top-2 probability.
    entropy: float32, entropy in nats.
    """

    token: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor




def inverse_temperature(temperature: float) -> float:
    """float32(1 / T) as a Python float: the one scale every backend applies."""
    return float(torch.tensor(1.0 / temperature, dtype=torch.float32))


def key_scales(inv_t: float) -> tuple[float, float]:
    """(c, s) of the perturbed value ``y = x * c + g * s`` (csrc/common/noise.h) for
    ``inv_t = inverse_temperature(T)``: s = 2**-e, e >= 0 the least making
    c = inv_t * s <= 1, so x * c never overflows and y is exactly (x / T + g) * s
    whenever that does not."""
    s = 1.0
    while inv_t * s > 1.0:  # exact: powers of two in float32's normal range
        s *= 0.5
    return inv_t * s, s


def token_stats_reference(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    tempered_scores: bool = False,
) -> TokenStats:
    lead, V = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, V).to(torch.float32)
    R = x.shape[0]
    sample = temperature > 0.0
    inv_t = inverse_temperature(temperature) if sample else 1.0

    scores = x * inv_t if (sample and tempered_scores) else x
    if sample:
        rows = torch.arange(R, device=x.device)
        c, s = key_scales(inv_t)
        token, _ = hierarchical_sample(x, c, s, seed, offset, rows)
        token = token.clamp(min=0)  # -1 (no finite key) only where the row is invalid below
    else:
        token = torch.argmax(x, dim=-1)

    logp = torch.log_softmax(scores.to(torch.float64), dim=-1)
    p = logp.exp()
    confidence = p.gather(-1, token.unsqueeze(-1)).squeeze(-1)
    top = p.topk(min(2, V), dim=-1).values
    margin = top[:, 0] - (top[:, 1] if V > 1 else 0.0)
    entropy = torch.special.entr(p).sum(-1)

    # No distribution: a NaN or +inf logit, or nothing but -inf; with tempered
    # scores also x / T overflowing float32 (no kernel can represent its softmax).
    row_max = x.max(dim=-1).values if R else x.new_zeros(0)
    invalid = torch.isnan(x).any(-1) | ~torch.isfinite(row_max) | (scores == float("inf")).any(-1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    token = torch.where(invalid, -1, token)
    confidence, margin, entropy = (torch.where(invalid, nan, v) for v in (confidence, margin, entropy))

    if positions is not None:
        off = ~positions.reshape(-1)
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
        token = torch.where(off, -1, token)
        confidence = torch.where(off, -inf, confidence)
        margin = torch.where(off, -inf, margin)
        entropy = torch.where(off, inf, entropy)

    return TokenStats(
        token.reshape(lead),
        confidence.to(torch.float32).reshape(lead),
        margin.to(torch.float32).reshape(lead),
        entropy.to(torch.float32).reshape(lead),
    )
