"""Every evaluation in one place: TAP-Vid metrics (``metrics``), query protocols (``protocols``), the query grid
and moved points (``queries``), scoring any tracker (``scoring``), sharded and resumable runs (``store``), the
seed ranges (``seeds``), model-level matching (``matching``), the cross-frame diagnostics (``crossframe``), and
the temporal consistency of generated videos (``temporal``, re-exported here)."""

from difftrack.evaluation.temporal import (
    frame_difference,
    sharpness,
    temporal_metrics,
    track_acceleration,
    warp_error,
)

__all__ = ["frame_difference", "sharpness", "temporal_metrics", "track_acceleration", "warp_error"]
