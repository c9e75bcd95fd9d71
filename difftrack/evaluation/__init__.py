"""Measures computed on generated videos."""

from difftrack.evaluation.temporal import (
    frame_difference,
    sharpness,
    temporal_metrics,
    track_acceleration,
    warp_error,
)

__all__ = ["frame_difference", "sharpness", "temporal_metrics", "track_acceleration", "warp_error"]
