"""The heuristic policies: the public samplers' rules (LLaDA, Dream, Fast-dLLM,
EB-Sampler, DUS) on the core ops. See :mod:`dmkernels.policies`."""
from __future__ import annotations

import functools

import torch

from .. import _checks as check
from .. import ops
from ..schedules import DreamTimesteps
from .base import Policy

__all__ = ["LowConfidence", "Random", "Margin", "Entropy", "DreamOrigin", "Threshold", "Factor", "EntropyBounded",
           "Dilated"]


def _gumbel_like(scores: torch.Tensor, generator) -> torch.Tensor:
    u = torch.rand(scores.shape, device=scores.device, dtype=torch.float32, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))


def _sample_topk(scores: torch.Tensor, quota, eligible, alg_temp, generator, backend) -> torch.Tensor:
    """Top-k, or with ``alg_temp`` k draws without replacement from softmax(score / alg_temp)
    (Gumbel-top-k: adding Gumbel noise and taking the top k has that distribution)."""
    if alg_temp:
        scores = scores.float() / alg_temp + _gumbel_like(scores, generator)
    return ops.select_topk(scores, quota, eligible, backend=backend)


class LowConfidence(Policy):
    """Commit the ``quota`` most confident positions (LLaDA 'low_confidence' remasking,
    Dream 'maskgit_plus' with ``tempered_scores=True``). ``alg_temp > 0`` samples the
    positions from softmax(confidence / alg_temp) instead (Dream)."""

    def __init__(self, schedule=None, *, alg_temp: float | None = None, tempered_scores: bool = False):
        super().__init__(schedule)
        if alg_temp is not None:  # 0 means off, as in Dream
            alg_temp = check.real(f"policies.{type(self).__name__}", "alg_temp", alg_temp, minimum=0.0)
        self.alg_temp = alg_temp
        self.tempered_scores = tempered_scores
        self.needs_generator = bool(alg_temp)

    def score(self, ctx):
        return ctx.stats.confidence

    def select(self, ctx):
        return _sample_topk(self.score(ctx), ctx.quota, ctx.eligible, self.alg_temp, ctx.generator, ctx.backend)


class Margin(LowConfidence):
    """Rank by top-1 minus top-2 probability (Dream 'topk_margin')."""

    def score(self, ctx):
        return ctx.stats.margin


class Entropy(LowConfidence):
    """Rank by negative entropy, most certain first (Dream 'entropy')."""

    def score(self, ctx):
        return ctx.stats.entropy.neg()


class Random(Policy):
    """Commit ``quota`` positions chosen uniformly at random (LLaDA 'random' remasking)."""

    needs_generator = True

    def select(self, ctx):
        scores = torch.rand(ctx.eligible.shape, device=ctx.eligible.device, generator=ctx.generator)
        return ops.select_topk(scores, ctx.quota, ctx.eligible, backend=ctx.backend)


class DreamOrigin(Policy):
    """Dream 'origin': each masked position is committed independently with probability
    ``1 - t[i+1] / t[i]`` (all at the last step)."""

    needs_generator = True
    tempered_scores = True
    uses_quota = False

    def __init__(self, schedule: DreamTimesteps | None = None):
        super().__init__(schedule if schedule is not None else DreamTimesteps())

    def select(self, ctx):
        p = ctx.schedule.transfer_probability(ctx.step)
        u = torch.rand(ctx.eligible.shape, device=ctx.eligible.device, generator=ctx.generator)
        return ctx.eligible & (u < p)


class Threshold(Policy):
    """Fast-dLLM: every position with confidence >= ``threshold`` (in [0, 1]), and at least
    the best one."""

    adaptive = True

    def __init__(self, threshold: float = 0.9):
        super().__init__()
        # confidences are probabilities: 0 commits everything, 1 only certain positions (and the best)
        self.threshold = check.real("policies.Threshold", "threshold", threshold, minimum=0.0, maximum=1.0)

    def select(self, ctx):
        return ops.select_threshold(ctx.stats.confidence, ctx.eligible, self.threshold, backend=ctx.backend)


class Factor(Policy):
    """Fast-dLLM factor rule: with confidences sorted c_1 >= c_2 >= ..., the longest prefix
    of n positions with ``(n + 1) * (1 - c_n) <= factor``; at least one.

    ``fast_dllm_quirk=True`` reproduces the public code's loop, which commits every
    masked position when the first failing one is the last in the order."""

    adaptive = True

    def __init__(self, factor: float = 1.0, *, fast_dllm_quirk: bool = False):
        super().__init__()
        self.factor = check.real("policies.Factor", "factor", factor, minimum=0.0)
        self.fast_dllm_quirk = fast_dllm_quirk

    def select(self, ctx):
        select = ops.select_factor(ctx.stats.confidence, ctx.eligible, self.factor, backend=ctx.backend)
        if self.fast_dllm_quirk:
            n = ctx.eligible.sum(-1, keepdim=True)
            took_all_but_last = select.sum(-1, keepdim=True) == n - 1
            select = torch.where(took_all_but_last, ctx.eligible, select)
        return select


class EntropyBounded(Policy):
    """EB-Sampler: order by an error proxy (``error`` = 'entropy', 'confidence' or
    'margin'), commit the longest prefix with ``sum(H) - max(H) <= gamma``; at least one."""

    adaptive = True
    _ERRORS = ("entropy", "confidence", "margin")

    def __init__(self, gamma: float = 0.1, error: str = "entropy"):
        super().__init__()
        if error not in self._ERRORS:
            raise ValueError(f"dmkernels.policies.EntropyBounded: error must be one of {self._ERRORS}, "
                             f"got {error!r}")
        self.gamma = check.real("policies.EntropyBounded", "gamma", gamma, minimum=0.0)
        self.error = error

    def select(self, ctx):
        s = ctx.stats
        error = {"entropy": s.entropy, "confidence": s.confidence.neg(), "margin": s.margin.neg()}[self.error]
        return ops.select_entropy_bounded(error, s.entropy, ctx.eligible, self.gamma, backend=ctx.backend)


class Dilated(Policy):
    """DUS: step i of a block commits the masked positions of dilated groups 0..i (coarse
    to fine, see :func:`dmkernels.dilated_groups`), so a block of B takes about
    log_base(B) model calls.

    With ``remask_threshold``, only the group's positions with confidence >= the
    threshold are committed (at least the most confident one); the others stay
    masked and are decoded at the next steps. The public DUS code leaves such
    remasked positions masked at the end; this follows the paper's intent."""

    adaptive = True

    def __init__(self, base: int = 2, remask_threshold: float | None = None):
        super().__init__()
        self.base = check.integer("policies.Dilated", "base", base, minimum=2)
        if remask_threshold is not None:
            remask_threshold = check.real("policies.Dilated", "remask_threshold", remask_threshold,
                                          minimum=0.0, maximum=1.0)
        self.remask_threshold = remask_threshold

    def groups(self, block_length: int, device) -> torch.Tensor:
        return _dilated_groups(block_length, self.base, str(device))

    def select(self, ctx):
        groups = self.groups(ctx.eligible.shape[1], ctx.eligible.device)
        select = ops.select_group(ctx.eligible, groups, ctx.step, backend=ctx.backend)
        if self.remask_threshold is not None:
            select = ops.select_threshold(ctx.stats.confidence, select, float(self.remask_threshold),
                                          backend=ctx.backend)
        return select


@functools.lru_cache(maxsize=64)
def _dilated_groups(block_length: int, base: int, device: str) -> torch.Tensor:
    # Built once per (length, base, device) and shared, not kept on the policy: a
    # policy holds no state that generating changes. Read-only for callers.
    return ops.dilated_groups(block_length, base, device=torch.device(device))
