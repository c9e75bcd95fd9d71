"""What decides a tracking result, apart from the trackers themselves (:mod:`difftrack.tracker`): the trackers'
names, the temporal modes and :class:`TrackerConfig`. Nothing here imports torch, so that `difftrack track`
builds its options and checks them before loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from difftrack.decoding import MotionModel

TRACKERS = ("paper", "difftrack")
TEMPORAL_MODES = ("viterbi", "none")


@dataclass
class TrackerConfig:
    """Everything that decides a tracking result (also written into the output's ``meta``)."""

    layers: list[int] | None = None  # None: the backbone's default tracking layers
    steps: list[int] | None = None  # step indices into a schedule of ``num_steps``; None: backbone default
    num_steps: int | None = None
    # Fields left None below take the model's calibrated setting (Backbone.tracker_settings), else the
    # uncalibrated one of UNCALIBRATED_SETTINGS: a setting chosen on one model never reaches another.
    noise: str | None = None
    noise_draws: int = 1  # independent noise draws whose costs are averaged (with noise "add")
    window: int | None = None  # frames per forward; None: the backbone's trained window
    # Sub-token position: 0 keeps the point's own place inside its matched token; r >= 1 soft-argmax in a
    # (2r+1)^2-token window.
    refine_window: int | None = None
    bidirectional: bool = True  # average C[s->j] with C[j->s]^T
    temporal: str | None = None  # "viterbi": HMM over candidates with a motion prior; "none": per-frame argmax
    candidates: int = 256  # tokens per frame the Viterbi pass chooses from (all of them on small grids)
    # The Viterbi pass's motion model (difftrack.decoding.MotionModel): tokens per frame, weight of log(cost)
    # against the prior, cost of being hidden.
    motion_sigma: float = MotionModel.sigma
    emission_weight: float = MotionModel.emission_weight
    occluded_log_cost: float = MotionModel.occluded_log_cost
    # Weight of the scene's dominant motion (estimated from all tokens' costs) in the motion prior; 0: off.
    background_weight: float | None = None
    background_sigma: float = MotionModel.background_sigma
    # Weight of log(presence), the frame's share of the point's joint attention against the best frame's,
    # on visible states: how strongly a frame where nothing matches the point well reads as "occluded".
    presence_weight: float | None = None
    cycle_threshold: float | None = None  # tokens; larger forward-backward error -> occluded; None: calibrated
    peak_threshold: float | None = None  # smaller head-averaged peak probability -> occluded; None: calibrated
    seed: int = 0
    backend: str = "auto"


# difftrack's tracker on a model it was not calibrated for: the paper's clean latents and hard argmax (the point
# keeps its place inside the matched token; a soft-argmax's last bits depend on the batch), per-frame argmax (the
# Viterbi pass and its motion weights were chosen on the embedded model).
UNCALIBRATED_SETTINGS = {"noise": "clean", "refine_window": 0, "temporal": "none", "background_weight": 0.0,
                         "presence_weight": 0.0}
