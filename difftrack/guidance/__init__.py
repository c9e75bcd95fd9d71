"""Guided sampling: CFG and Cross-Attention Guidance (the guidance step in ``predictor``, the
perturbed branch in ``removal``)."""

from difftrack.guidance.predictor import GUIDANCE_MODES, GuidanceConfig, GuidedPredictor, combine
from difftrack.guidance.removal import (
    CrossFrameAttentionRemoval,
    CrossFramePerturbedProcessor,
    PerturbationState,
    check_cag_support,
)

__all__ = ["GUIDANCE_MODES", "GuidanceConfig", "GuidedPredictor", "combine", "CrossFrameAttentionRemoval",
           "CrossFramePerturbedProcessor", "PerturbationState", "check_cag_support"]
