"""Scheduling policies: which masked positions a denoising step commits.

A policy turns the step's statistics into a selection with the core ops, on the
device. Write your own by subclassing :class:`Policy` and returning a bool mask
from :meth:`Policy.select`; no host sync is allowed there, and nothing on the
policy may change while it generates (keep per-generation state out of it:
the schedule's per-block plan is ``ctx.schedule``, recorded decisions go to
``ctx.recorder``). Pass
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

The package: :mod:`~dmkernels.policies.base` (``StepContext``, ``Policy``),
:mod:`~dmkernels.policies.heuristics` (the public samplers' rules) and
:mod:`~dmkernels.policies.learned` (``LearnedPolicy``, its scorers and
``Trajectory``, and the registry of task feature providers:
``register_feature``; also importable as :mod:`dmkernels.learned`). ``base`` imports
neither of the others, and they do not import each other.
"""
from __future__ import annotations

from .base import Policy, StepContext
from .heuristics import (
    Dilated,
    DreamOrigin,
    Entropy,
    EntropyBounded,
    Factor,
    LowConfidence,
    Margin,
    Random,
    Threshold,
)
from .learned import LearnedPolicy, feature_provider, feature_providers, register_feature

__all__ = [
    "StepContext", "Policy", "LowConfidence", "Random", "Margin", "Entropy", "DreamOrigin",
    "Threshold", "Factor", "EntropyBounded", "Dilated", "LearnedPolicy",
    "register_feature", "feature_provider", "feature_providers",
]
