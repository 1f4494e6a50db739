"""dmkernels: fused sampling ops and schedulers for masked diffusion language models.

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
)

__version__ = "0.1.0"

__all__ = [
    "TokenStats",
    "backends",
    "commit_",
    "dilated_groups",
    "select_entropy_bounded",
    "select_factor",
    "select_group",
    "select_threshold",
    "select_topk",
    "token_stats",
]
