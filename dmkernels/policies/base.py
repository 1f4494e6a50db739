"""What every policy builds on: :class:`StepContext` (what a step shows the
policy) and :class:`Policy` (the base class). Imports nothing else of
:mod:`dmkernels.policies`, so the heuristic and learned policies both build on
it without importing each other."""
from __future__ import annotations

import dataclasses

import torch

from .. import ops
from ..schedules import LinearCounts, Schedule

__all__ = ["StepContext", "Policy"]


@dataclasses.dataclass
class StepContext:
    """What a policy sees at one step; every tensor is [B, W] over the current block."""

    stats: ops.TokenStats          # token, confidence, margin, entropy (see dmkernels.token_stats)
    eligible: torch.Tensor         # bool: masked positions of the block that may be committed
    step: int | torch.Tensor       # step index within the block (0-based); a device scalar when captured
    steps: int                     # steps per block for scheduled policies
    block: int                     # block index
    quota: torch.Tensor | None     # int64 [B] from the block's schedule plan, or None
    logits: torch.Tensor           # [B, W, V] rows of the block (read-only for policies)
    x: torch.Tensor                # the canvas of the block [B, W] (read-only for policies)
    generator: torch.Generator | None  # for policies that draw random numbers
    # The block's plan from the policy's schedule (Schedule.begin_block), kept by the
    # sampler: ``quota(step, masked_now)``, and e.g. ``transfer_probability(step)``.
    schedule: object | None
    # [B, W, H] hidden states for policies with needs_hidden: the model's
    # hidden_states[policy.hidden_layer] (default -1, the last layer's output).
    hidden: torch.Tensor | None = None
    backend: str | None = None     # the generation's backend: pass it to every op (backend=ctx.backend)
    # Where a policy that records its decisions writes them (a learned policy's
    # dmkernels.policies.learned.Trajectory during training rollouts); None otherwise.
    recorder: object | None = None


class Policy:
    """Base class of the scheduling rules.

    A policy is settings plus a rule: :meth:`select` reads the step's
    :class:`StepContext` and returns a bool mask [B, W] of the positions to
    commit, on the device, without host sync. Nothing that changes during a
    generation lives on the policy (the schedule's per-block plan lives in the
    sampler, recorded decisions in ``ctx.recorder``), so one policy object can
    serve any number of generations, one after another or at once.
    """

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
            module = type(self).__module__
            module = "dmkernels.policies" if module.startswith("dmkernels.policies.") else module  # the public path
            raise TypeError(f"{module}.{type(self).__qualname__}: schedule must be a "
                            f"dmkernels.schedules.Schedule or None, got {type(schedule).__name__}")
        self.schedule = schedule if schedule is not None else (None if self.adaptive else LinearCounts())

    def select(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
