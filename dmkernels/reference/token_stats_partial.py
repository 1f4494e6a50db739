"""Reference token_stats_partial: token_stats of one vocabulary slice, unfinished.

A rank of a tensor-parallel model holds columns [vocab_start, vocab_start + V) of
every row. It reduces its slice to eight float32 numbers per row, and any set of
slices that tiles the vocabulary merges (``merge_token_stats_partials``) into
exactly what ``token_stats`` gives on the whole row:

  0 MAX     m = max of the scores z over the slice (z = x, or x / T for tempered scores)
  1 SUM     S = sum exp(z - m)
  2 ENT     A = sum exp(z - m) (z - m)
  3 SECOND  second-largest z, counted with multiplicity (two equal maxima: SECOND = m)
  4 KEY     what the token maximises: the largest x at T = 0, else the largest
            group key K_g of the hierarchical Gumbel-max (csrc/common/noise.h):
            the slice's winning noise group, whose noise is that of the GLOBAL
            group and columns, so the draw does not depend on how the vocabulary
            is cut. At T > 0 slices start on a group edge (vocab_start % 32 == 0,
            checked), so every group is whole in one slice
  5 TOKEN   global column of KEY (the lowest on ties), as a float (exact below 2^24)
  6 TOKEN_SCORE  z of that column
  7 INVALID 1 if the slice holds a NaN or a +inf logit (or a +inf tempered
            score: x / T overflowing float32), else 0

An all -inf slice, and a row that ``positions`` leaves out, is the empty slice
(-inf, 0, 0, -inf, -inf, -1, -inf, 0). An invalid slice is
(NaN, NaN, NaN, NaN, NaN, -1, NaN, 1).

Merging M = max m_k gives S = sum_k exp(m_k - M) S_k and
A = sum_k exp(m_k - M) (A_k + (m_k - M) S_k) (the rescaling of
csrc/cpu/token_stats.cpp), the token is the lowest TOKEN among the slices whose
KEY is the largest, and the global second value is the largest of every SECOND
and of every MAX but the winner's (so maxima tied across slices give margin 0).
At T > 0 the slice with the largest group key holds the winning group, and its
TOKEN is the column sampled inside it, so the same rule picks the token.
"""
from __future__ import annotations

import torch

from .noise import GROUP, hierarchical_sample
from .token_stats import TokenStats, inverse_temperature, key_scales

MAX, SUM, ENT, SECOND, KEY, TOKEN, TOKEN_SCORE, INVALID = range(8)
NUM_FIELDS = 8
#: Global columns travel as float32: exact below this bound.
MAX_COLUMNS = 1 << 24


def empty_partial(shape, device) -> torch.Tensor:
    """The partial of a slice with nothing in it (or a row that is not requested)."""
    inf = float("inf")
    row = torch.tensor([-inf, 0.0, 0.0, -inf, -inf, -1.0, -inf, 0.0], dtype=torch.float32, device=device)
    return row.expand(*shape, NUM_FIELDS).clone()


def token_stats_partial_reference(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    tempered_scores: bool = False,
    vocab_start: int = 0,
    row_offset: int = 0,
) -> torch.Tensor:
    lead, V = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, V).to(torch.float32)
    R = x.shape[0]
    out = empty_partial((R,), x.device)
    if R == 0:
        return out.reshape(*lead, NUM_FIELDS)
    sample = temperature > 0.0
    inv_t = inverse_temperature(temperature) if sample else 1.0
    z = x * inv_t if (sample and tempered_scores) else x

    m = z.max(-1).values
    finite = m > float("-inf")
    d = (z - m[:, None]).to(torch.float64)
    e = torch.where(finite[:, None], torch.exp(d), 0.0)
    S = e.sum(-1)
    A = torch.where(e > 0, e * d, 0.0).sum(-1)
    second = z.topk(2, dim=-1).values[:, 1] if V > 1 else torch.full_like(m, float("-inf"))

    if sample:
        # vocab_start % 32 == 0 (checked): the slice's groups are global groups.
        rows = torch.arange(R, device=x.device) + row_offset
        c, s = key_scales(inv_t)
        col, key = hierarchical_sample(x, c, s, seed, offset, rows, vocab_start // GROUP)
        col = col.clamp(min=0)
    else:
        key, col = x.max(-1)  # torch.max returns the first maximal index
    token_score = z.gather(-1, col[:, None]).squeeze(-1)
    has_key = key > float("-inf")

    out[:, MAX] = m
    out[:, SUM] = torch.where(finite, S, 0.0).to(torch.float32)
    out[:, ENT] = torch.where(finite, A, 0.0).to(torch.float32)
    out[:, SECOND] = second
    out[:, KEY] = key
    out[:, TOKEN] = torch.where(has_key, (col + vocab_start).to(torch.float32), -1.0)
    out[:, TOKEN_SCORE] = torch.where(has_key, token_score, float("-inf"))

    invalid = torch.isnan(x).any(-1) | (z == float("inf")).any(-1)
    nan = float("nan")
    bad = torch.tensor([nan, nan, nan, nan, nan, -1.0, nan, 1.0], dtype=torch.float32, device=x.device)
    out = torch.where(invalid[:, None], bad, out)
    if positions is not None:
        out = torch.where(positions.reshape(-1, 1), out, empty_partial((R,), x.device))
    return out.reshape(*lead, NUM_FIELDS)


def merge_token_stats_partials(partials: torch.Tensor, positions: torch.Tensor | None = None) -> TokenStats:
    """Combine the partials of slices that tile the vocabulary: ``partials`` is
    [W, ..., 8] (slice first, any order). Small tensors only, no host sync."""
    p = partials.to(torch.float64)
    inf = float("inf")
    m = p[..., MAX]
    invalid = (p[..., INVALID] > 0).any(0)
    M = m.max(0).values
    valid = ~invalid & (M > -inf) & (M < inf)
    Msafe = torch.where(valid, M, 0.0)
    has = m > -inf
    shift = torch.where(has, m - Msafe, 0.0)
    w = torch.where(has, torch.exp(shift), 0.0)
    S = (w * p[..., SUM]).sum(0)
    A = (w * (p[..., ENT] + shift * p[..., SUM])).sum(0)

    key = p[..., KEY]
    best = key.max(0).values
    candidates = torch.where((key == best) & (p[..., TOKEN] >= 0), p[..., TOKEN], inf)
    token_f, winner = candidates.min(0)
    token_score = p[..., TOKEN_SCORE].gather(0, winner.unsqueeze(0)).squeeze(0)

    # Second value: every slice's SECOND, and every slice's MAX except one copy of the top.
    W = p.shape[0]
    top_slice = torch.where(m == M, torch.arange(W, device=p.device).view(-1, *([1] * (m.dim() - 1))), W).min(0).values
    others = torch.where(torch.arange(W, device=p.device).view(-1, *([1] * (m.dim() - 1))) == top_slice, -inf, m)
    second = torch.maximum(p[..., SECOND].max(0).values, others.max(0).values)

    Ssafe = torch.where(valid, S, 1.0)
    confidence = torch.exp(token_score - Msafe) / Ssafe
    margin = (1.0 - torch.exp(second - Msafe)) / Ssafe
    entropy = torch.clamp(torch.log(Ssafe) - A / Ssafe, min=0.0)
    token = torch.where(valid & (token_f < inf), token_f, -1.0).to(torch.int64)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=p.device)
    confidence, margin, entropy = (torch.where(valid, v, nan) for v in (confidence, margin, entropy))
    if positions is not None:
        off = ~positions
        token = torch.where(off, -1, token)
        confidence = torch.where(off, -inf, confidence)
        margin = torch.where(off, -inf, margin)
        entropy = torch.where(off, inf, entropy)
    return TokenStats(token, confidence.to(torch.float32), margin.to(torch.float32), entropy.to(torch.float32))
