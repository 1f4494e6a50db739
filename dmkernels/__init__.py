"""dmkernels: fused sampling ops and schedulers for masked diffusion language models.

``dmkernels.generate`` runs a whole generation with any policy of
``dmkernels.policies``; ``dmkernels.compat`` holds drop-ins for the public samplers.
The ops (token_stats, select_*, dilated_groups, commit_) run the decision of a
denoising step (which token, how sure, which positions to commit) on the
device, in one pass over the logits, without host syncs.
"""
from . import fake as _fake  # noqa: F401  (registers torch.compile fakes)
from . import ops as _ops
from .ops import *  # noqa: F401,F403  (TokenStats, backends, dilated_groups and one function per registry op)
from . import cache, compat, policies, schedules, testing  # noqa: F401
from .sampler import Generation, generate, infill

__version__ = "0.1.0"

__all__ = sorted(["Generation", "generate", "infill", *_ops.__all__])
