"""Learned scheduling policies: moved to :mod:`dmkernels.policies.learned`.

This module keeps ``dmkernels.learned.LearnedPolicy`` and the other names
working; new code can import from either place.
"""
from .policies.learned import (  # noqa: F401
    FEATURES,
    MAX_EXACT_SET,
    NUM_FEATURES,
    SCORERS,
    LearnedPolicy,
    MLPScorer,
    TransformerScorer,
    Trajectory,
    _scorer_config,
    _scorer_shapes,
    set_log_prob,
    step_features,
)

__all__ = ["FEATURES", "LearnedPolicy", "MLPScorer", "TransformerScorer", "Trajectory", "set_log_prob",
           "step_features"]
