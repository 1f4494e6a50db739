"""Step schedules: how many masked positions a step commits.

A schedule turns "this block has n masked positions and s steps" into a count
per row and step, on the device (no host sync). Policies that rank positions
(LowConfidence, Random, Margin, Entropy) take their k from a schedule; adaptive
policies (Threshold, Factor, EntropyBounded, Dilated) need none.

Schedules are settings, not state: :meth:`Schedule.begin_block` returns the
block's plan (a :class:`BlockPlan`), which the sampler keeps for the block and
hands to the policy as ``ctx.schedule``; the schedule object itself is never
changed, so one policy can serve several generations at once.
"""
from __future__ import annotations

import torch

from . import _checks

__all__ = ["Schedule", "BlockPlan", "LinearCounts", "DreamTimesteps"]


class BlockPlan:
    """One block's schedule: ``quota(step, masked_now)`` returns int64 [B] for one
    step (device tensors only; ``step`` is an int or a device scalar)."""

    def __init__(self, steps: int):
        self.steps = steps

    def quota(self, step, masked_now: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Schedule:
    """Base class. ``begin_block(masked, steps)`` sees the masked count per row at
    the block's start and returns the block's :class:`BlockPlan`.

    A subclass written against the older protocol (``begin_block`` storing what
    it needs on ``self`` and returning None, ``quota`` on the schedule) still
    works: the sampler then uses the schedule itself as the plan."""

    def begin_block(self, masked: torch.Tensor, steps: int) -> BlockPlan | None:
        raise NotImplementedError


class _LinearPlan(BlockPlan):
    def __init__(self, masked: torch.Tensor, steps: int):
        super().__init__(steps)
        self.base = masked // steps
        self.remainder = masked % steps

    def quota(self, step, masked_now: torch.Tensor) -> torch.Tensor:
        return self.base + (step < self.remainder).to(self.base.dtype)


class LinearCounts(Schedule):
    """LLaDA's fixed counts: a block with n masks and s steps commits n // s per
    step, one more in the first n % s steps (so the block is done after s steps)."""

    def begin_block(self, masked: torch.Tensor, steps: int) -> BlockPlan:
        return _LinearPlan(masked, steps)

    def __repr__(self):
        return "LinearCounts()"


def _at_step(table: torch.Tensor, step) -> torch.Tensor:
    """``table[step]`` for an int or a device scalar. Indexing with a 0-d CUDA
    tensor reads it on the host (``.item()``), which a CUDA graph capture forbids;
    ``index_select`` keeps the step on the device."""
    if isinstance(step, torch.Tensor):
        return table.index_select(0, step.reshape(1).to(table.device)).reshape(())
    return table[step]


class _DreamPlan(BlockPlan):
    def __init__(self, eps: float, masked: torch.Tensor, steps: int):
        super().__init__(steps)
        t = torch.linspace(1, eps, steps + 1, device=masked.device)
        # Elementwise the same float32 operations as Dream's 1 - s / t, precomputed per step;
        # the last step commits everything (probability 1).
        self.fraction = 1 - t[1:] / t[:-1]
        self.probability = self.fraction.clone()
        self.probability[-1] = 1.0

    def transfer_probability(self, step) -> torch.Tensor:
        """``1 - t[i+1]/t[i]`` (1 at the last step); ``step`` an int or a device tensor."""
        return _at_step(self.probability, step)

    def quota(self, step, masked_now: torch.Tensor) -> torch.Tensor:
        mean_masked = masked_now.sum() / masked_now.shape[0]
        scheduled = (mean_masked * _at_step(self.fraction, step)).to(torch.int64)
        count = torch.where(torch.as_tensor(step, device=masked_now.device) < self.steps - 1,
                            scheduled, mean_masked.to(torch.int64))
        return count.expand(masked_now.shape[0])


class DreamTimesteps(Schedule):
    """Dream's schedule: timesteps ``t = linspace(1, eps, steps + 1)``; step i commits
    ``int(mean_masked * (1 - t[i+1] / t[i]))`` positions (all that remain at the last
    step), where ``mean_masked`` is the masked count averaged over the batch, in
    float32, exactly as Dream computes it. The plan's ``transfer_probability(i)`` is
    the per-position probability ``1 - t[i+1]/t[i]`` used by Dream's "origin" rule."""

    def __init__(self, eps: float = 1e-3):
        self.eps = _checks.real("DreamTimesteps", "eps", eps, minimum=0.0, maximum=1.0)

    def begin_block(self, masked: torch.Tensor, steps: int) -> BlockPlan:
        return _DreamPlan(self.eps, masked, steps)

    def __repr__(self):
        return f"DreamTimesteps(eps={self.eps!r})"
