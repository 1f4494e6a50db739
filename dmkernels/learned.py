"""Learned scheduling policies: moved to :mod:`dmkernels.policies.learned`.

This module keeps ``dmkernels.learned.LearnedPolicy`` and the other names
working; new code can import from either place.
"""
from .policies.learned import (  # noqa: F401
    FEATURES,
    BlockScorer,
    MAX_EXACT_SET,
    NUM_FEATURES,
    SCORERS,
    FeatureProvider,
    LearnedPolicy,
    MLPScorer,
    TransformerScorer,
    Trajectory,
    _scorer_config,
    _scorer_shapes,
    feature_provider,
    feature_providers,
    register_feature,
    run_scorer,
    set_log_prob,
    step_features,
)

__all__ = ["FEATURES", "BlockScorer", "FeatureProvider", "LearnedPolicy", "MLPScorer", "TransformerScorer",
           "Trajectory", "feature_provider", "feature_providers", "register_feature", "run_scorer", "set_log_prob",
           "step_features"]
