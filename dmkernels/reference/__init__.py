"""Pure-PyTorch ground truth for every dmkernels op (one file per op).

Kernels are tested against these; without the compiled extension the public
API in dmkernels.ops falls back to them.
"""
from .commit import commit_reference
from .denoise_stats import DenoiseStats, denoise_stats_reference
from .dilated import dilated_groups_reference, dilated_strides, select_group_reference
from .edit import edit_reference
from .noise import gumbel_noise, noise_bits, philox4x32_10
from .renoise import renoise_reference
from .select_entropy_bounded import select_entropy_bounded_reference
from .select_factor import select_factor_reference
from .select_threshold import select_threshold_reference
from .select_topk import select_topk_reference
from .token_stats import TokenStats, inverse_temperature, token_stats_reference

__all__ = [
    "DenoiseStats",
    "TokenStats",
    "commit_reference",
    "denoise_stats_reference",
    "dilated_groups_reference",
    "dilated_strides",
    "edit_reference",
    "gumbel_noise",
    "inverse_temperature",
    "noise_bits",
    "philox4x32_10",
    "renoise_reference",
    "select_entropy_bounded_reference",
    "select_factor_reference",
    "select_group_reference",
    "select_threshold_reference",
    "select_topk_reference",
    "token_stats_reference",
]
