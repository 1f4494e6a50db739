"""dmkernels: fused sampling ops and schedulers for masked diffusion language models.

``dmkernels.generate`` runs a whole generation with any policy of
``dmkernels.policies``; ``dmkernels.compat`` holds drop-ins for the public samplers.
The ops (token_stats, select_*, dilated_groups, commit_) run the decision of a
denoising step (which token, how sure, which positions to commit) on the
device, in one pass over the logits, without host syncs.
"""
from . import fake as _fake  # noqa: F401  (registers torch.compile fakes)
from .ops import (
    TokenStats,
    backends,
    commit_,
    dilated_groups,
    select_entropy_bounded,
    select_factor,
    select_group,
    select_threshold,
    select_topk,
    token_stats,
    token_stats_partial,
)
from . import cache, compat, policies, schedules, testing  # noqa: F401
from .sampler import Generation, generate, infill

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "TokenStats",
    "backends",
    "commit_",
    "dilated_groups",
    "generate",
    "infill",
    "select_entropy_bounded",
    "select_factor",
    "select_group",
    "select_threshold",
    "select_topk",
    "token_stats",
    "token_stats_partial",
]
