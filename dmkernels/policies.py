"""Scheduling policies: which masked positions a denoising step commits.

A policy turns the step's statistics into a selection with the core ops, on the
device. Write your own by subclassing :class:`Policy` and returning a bool mask
from :meth:`Policy.select`; no host sync is allowed there. Pass
``backend=ctx.backend`` to every op, so that ``generate(..., backend=...)``
runs the whole step on the backend the caller chose::

    class MostConfidentHalf(Policy):
        adaptive = True                      # run until the block is done
        def select(self, ctx):
            k = (ctx.eligible.sum(-1) + 1) // 2
            return select_topk(ctx.stats.confidence, k, ctx.eligible, backend=ctx.backend)

Two kinds of policy exist. *Scheduled* policies (``adaptive = False``) commit
the count their :class:`~dmkernels.schedules.Schedule` gives, so a block takes
exactly ``steps`` steps. *Adaptive* policies (``adaptive = True``) decide how
many to commit from the scores and the block runs until no mask is left (at
most ``block_length`` steps, since every step commits at least one position of
every row that has one).
"""
from __future__ import annotations

import dataclasses
import torch

from . import _checks as check
from . import ops
from .schedules import DreamTimesteps, LinearCounts, Schedule

__all__ = [
    "StepContext", "Policy", "LowConfidence", "Random", "Margin", "Entropy", "DreamOrigin",
    "Threshold", "Factor", "EntropyBounded", "Dilated", "LearnedPolicy",
]


@dataclasses.dataclass
class StepContext:
    """What a policy sees at one step; every tensor is [B, W] over the current block."""

    stats: ops.TokenStats          # token, confidence, margin, entropy (see dmkernels.token_stats)
    eligible: torch.Tensor         # bool: masked positions of the block that may be committed
    step: int | torch.Tensor       # step index within the block (0-based); a device scalar when captured
    steps: int                     # steps per block for scheduled policies
    block: int                     # block index
    quota: torch.Tensor | None     # int64 [B] from the policy's schedule, or None
    logits: torch.Tensor           # [B, W, V] rows of the block (read-only for policies)
    x: torch.Tensor                # the canvas of the block [B, W] (read-only for policies)
    generator: torch.Generator | None  # for policies that draw random numbers
    schedule: Schedule | None
    hidden: torch.Tensor | None = None  # [B, W, H] last hidden states, for policies with needs_hidden
    backend: str | None = None     # the generation's backend: pass it to every op (backend=ctx.backend)


def _gumbel_like(scores: torch.Tensor, generator) -> torch.Tensor:
    u = torch.rand(scores.shape, device=scores.device, dtype=torch.float32, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))


def _sample_topk(scores: torch.Tensor, quota, eligible, alg_temp, generator, backend) -> torch.Tensor:
    """Top-k, or with ``alg_temp`` k draws without replacement from softmax(score / alg_temp)
    (Gumbel-top-k: adding Gumbel noise and taking the top k has that distribution)."""
    if alg_temp:
        scores = scores.float() / alg_temp + _gumbel_like(scores, generator)
    return ops.select_topk(scores, quota, eligible, backend=backend)


class Policy:
    """Base class of the scheduling rules."""

    adaptive: bool = False
    #: scores under softmax(x / T) (Dream) instead of softmax(x) (LLaDA) when T > 0
    tempered_scores: bool = False
    #: draws random numbers from ``ctx.generator``
    needs_generator: bool = False
    #: reads ``ctx.quota`` (the schedule's count for the step)
    uses_quota: bool = True

    def __init__(self, schedule: Schedule | None = None):
        if schedule is not None and not isinstance(schedule, Schedule):
            # e.g. LowConfidence(0.9) meant as a threshold: refuse now, not at the first step
            raise TypeError(f"{type(self).__module__}.{type(self).__qualname__}: schedule must be a "
                            f"dmkernels.schedules.Schedule or None, got {type(schedule).__name__}")
        self.schedule = schedule if schedule is not None else (None if self.adaptive else LinearCounts())

    def select(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


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
        self._groups = {}

    def groups(self, block_length: int, device) -> torch.Tensor:
        key = (block_length, str(device))
        if key not in self._groups:
            self._groups[key] = ops.dilated_groups(block_length, self.base, device=device)
        return self._groups[key]

    def select(self, ctx):
        groups = self.groups(ctx.eligible.shape[1], ctx.eligible.device)
        select = ops.select_group(ctx.eligible, groups, ctx.step, backend=ctx.backend)
        if self.remask_threshold is not None:
            select = ops.select_threshold(ctx.stats.confidence, select, float(self.remask_threshold),
                                          backend=ctx.backend)
        return select


# After Policy and StepContext: dmkernels.learned builds on them.
from .learned import LearnedPolicy  # noqa: E402
