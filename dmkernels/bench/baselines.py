"""Eager PyTorch baselines: a denoising step written the way the public samplers
write it (our own code, following their algorithms and their costs).

- :func:`llada_step`: LLaDA's ``generate.py`` step: float64 Gumbel noise over the
  whole ``[B, L, V]``, a float64 softmax, then a Python loop of per-row ``topk``
  calls, each with a host-side ``int`` of k, and a boolean-mask write.
- :func:`dream_step`: Dream's ``sample_tokens`` on the masked rows, with the
  margin and entropy scores: float32 softmax, a full-vocabulary sort for the top
  two probabilities, entropy as ``-(p * log(p + eps)).sum()``.
- :func:`eager_float32_stats`: the best plain-PyTorch version of ``token_stats``
  (float32, no sort, no float64).
- the selection rules over ``[B, L]`` scores: LLaDA's top-k loop, Fast-dLLM's
  threshold and factor rules, EB-Sampler's entropy bound; and the commit write.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Step(NamedTuple):
    """What a baseline step decided: the proposal ``x0`` [B, L] and ``transfer`` [B, L] bool."""

    x0: torch.Tensor
    transfer: torch.Tensor


class Stats(NamedTuple):
    """Per-row token and scores from a baseline (token int64, scores float32)."""

    token: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor


def _llada_gumbel(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # LLaDA draws in float64 over the whole tensor: exp(x) / (-log u)^T is
    # monotone in x / T + Gumbel noise, so its argmax is a Gumbel-max sample.
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel


def llada_topk_transfer(confidence: torch.Tensor, num_transfer: torch.Tensor) -> torch.Tensor:
    """LLaDA's selection: a Python loop over rows, one ``torch.topk`` each.

    ``confidence`` [B, L] holds -inf at positions that may not be chosen;
    ``num_transfer`` [B] is read on the host row by row (a sync per row on a GPU).
    """
    transfer = torch.zeros_like(confidence, dtype=torch.bool)
    for row in range(confidence.shape[0]):
        _, chosen = torch.topk(confidence[row], k=int(num_transfer[row]))
        transfer[row, chosen] = True
    return transfer


def write_transfer(x: torch.Tensor, x0: torch.Tensor, transfer: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The samplers' commit: ``x[transfer] = x0[transfer]`` (a boolean gather and
    scatter), then the masks left per row (int64 [B]) for the "done?" test."""
    x[transfer] = x0[transfer]
    return (x == mask_id).sum(-1)


def llada_step(
    logits: torch.Tensor,
    x: torch.Tensor,
    mask_index: torch.Tensor,
    num_transfer: torch.Tensor,
    temperature: float,
    mask_id: int,
) -> Step:
    """One LLaDA denoising step (``remasking="low_confidence"``), writing into ``x``.

    Parameters
    ----------
    logits : Tensor [B, L, V]
        Model output (any float dtype; LLaDA casts to float64 itself).
    x : int64 Tensor [B, L]
        Canvas, updated in place at the chosen positions.
    mask_index : bool Tensor [B, L]
        Positions that may be committed this step (masked, in the current block).
    num_transfer : int64 Tensor [B]
        How many positions each row commits.
    temperature : float
        0 takes the argmax of the raw logits; T > 0 a float64 Gumbel-max sample.
    mask_id : int
        The mask token (only for the masks-left count).

    Returns
    -------
    Step(x0, transfer): the proposal (``x`` where not masked) and the committed positions.
    """
    x0 = torch.argmax(_llada_gumbel(logits, temperature), dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -torch.inf)
    transfer = llada_topk_transfer(confidence, num_transfer)
    write_transfer(x, x0, transfer, mask_id)
    return Step(x0, transfer)


def dream_step(logits: torch.Tensor, mask_index: torch.Tensor, temperature: float = 0.0) -> Stats:
    """Dream's ``sample_tokens`` on the masked rows, computing both of its
    margin and entropy scores (Dream computes one per run; each costs a pass).

    Parameters
    ----------
    logits : Tensor [B, L, V]
    mask_index : bool Tensor [B, L]
        Dream gathers these rows (``logits[mask_index]``, a copy) before sampling.
    temperature : float
        T > 0 divides the logits by T and samples with ``Categorical``; the scores
        then describe the tempered distribution.

    Returns
    -------
    Stats over the masked rows, flat [n_masked]: token, its probability, top-1
    minus top-2 probability, entropy (Dream's "entropy" score is its negative).
    """
    masked = logits[mask_index].float()
    if temperature > 0:
        masked = masked / temperature
    probs = torch.softmax(masked, dim=-1)
    if temperature > 0:
        token = torch.distributions.Categorical(probs=probs).sample()
        confidence = torch.gather(probs, -1, token.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, token = probs.max(dim=-1)
    sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
    margin = sorted_probs[:, 0] - sorted_probs[:, 1]
    entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return Stats(token, confidence, margin, entropy)


def eager_float32_stats(logits: torch.Tensor) -> Stats:
    """``token_stats`` at temperature 0 in plain float32 PyTorch: softmax, argmax,
    gather, ``topk(2)`` of the probabilities for the margin, and entropy from
    ``log_softmax``. Every step materialises a ``[..., V]`` float32 tensor.

    Returns Stats shaped ``logits.shape[:-1]``.
    """
    x = logits.float()
    p = torch.softmax(x, dim=-1)
    token = torch.argmax(x, dim=-1)
    confidence = torch.gather(p, -1, token.unsqueeze(-1)).squeeze(-1)
    top2 = torch.topk(p, 2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    entropy = -(p * torch.log_softmax(x, dim=-1)).sum(-1)
    return Stats(token, confidence, margin, entropy)


def threshold_transfer(confidence: torch.Tensor, mask_index: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's threshold rule, vectorised as Fast-dLLM writes it: masked
    positions with confidence >= threshold, plus each row's most confident one."""
    confidence = torch.where(mask_index, confidence, -torch.inf)
    transfer = mask_index & (confidence >= threshold)
    best = torch.zeros_like(transfer).scatter_(1, torch.argmax(confidence, dim=1, keepdim=True), True)
    return (transfer | best) & mask_index


def factor_transfer(confidence: torch.Tensor, mask_index: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule, per row: sort the masked confidences, scan them in
    Python (a host read per element) for the longest prefix of n with
    ``(n + 1) * (1 - c_n) <= factor`` (at least one), then ``topk`` of that many."""
    confidence = torch.where(mask_index, confidence, -torch.inf)
    transfer = torch.zeros_like(mask_index)
    for row in range(confidence.shape[0]):
        n_masked = int(mask_index[row].sum())
        if n_masked == 0:
            continue
        ordered = torch.sort(confidence[row][mask_index[row]], descending=True).values
        count = 1
        while count < n_masked and (count + 2) * (1 - ordered[count]) <= factor:
            count += 1
        _, chosen = torch.topk(confidence[row], k=count)
        transfer[row, chosen] = True
    return transfer


def entropy_bounded_transfer(
    error: torch.Tensor, entropy: torch.Tensor, mask_index: torch.Tensor, gamma: float
) -> torch.Tensor:
    """EB-Sampler's rule, per row: masked positions by ascending error; the longest
    prefix with ``sum(H) - max(H) <= gamma`` (at least one)."""
    transfer = torch.zeros_like(mask_index)
    for row in range(error.shape[0]):
        candidates = mask_index[row].nonzero().squeeze(1)
        if candidates.numel() == 0:
            continue
        order = candidates[torch.argsort(error[row, candidates])]
        h = entropy[row, order]
        within = (torch.cumsum(h, 0) - torch.cummax(h, 0).values) <= gamma
        count = max(1, int(within.sum()))
        transfer[row, order[:count]] = True
    return transfer
