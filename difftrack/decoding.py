"""Temporal decoding of a track from per-frame match candidates: a hidden-Markov model solved by Viterbi.

Per frame the states are the K best tokens of the frame's cost map (each at its sub-token soft-argmax
position) plus one occluded state. A path pays, per frame:

- emission: ``emission_weight`` x log(cost) of the candidate it sits on, or ``occluded_log_cost`` on the
  occluded state (a point whose candidates are all weaker than that is better explained as hidden); a
  weight below 1 trusts the motion prior more than a model whose costs are weak;
- motion: |step|^2 / (2 sigma^2) in token units between consecutive visible positions (an occluded
  stretch keeps the position it entered with, and the step out of it is measured from there);
- switching: ``enter_cost`` to become occluded, ``leave_cost`` to reappear;
- presence: ``presence_weight`` x log(presence) on every visible state of a frame, where presence in (0, 1]
  is how much of the point's joint attention the frame gets relative to the frame that gets most (a covered
  point's descriptor finds nothing like itself there, however confidently the per-frame softmax picks a
  neighbour).

An occluded point moves with the scene's dominant motion (it is covered, not stopped) and pays that step's
prior like a visible point would; once the motion has carried it out of the frame (``bounds``) staying
occluded costs nothing more: a point out of view is not visible.

With ``background_weight`` > 0 the motion prior has two components: with that weight the step follows the
scene's dominant motion (``background_steps``, e.g. a camera pan estimated from all of the frame's
tokens) within ``background_sigma`` tokens, otherwise it is free as above; points on a wall then follow
the wall exactly instead of jittering between equally plausible tokens.

So a distractor peak far from the track's path loses to a slightly weaker peak on it. The first
frame of a segment is the known start (the query point, or the end of the previous window).

Torch is imported inside the functions: the tracker's options take their defaults from :class:`MotionModel`
in `difftrack track`'s argument checks, which run without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MotionModel:
    sigma: float = 2.0  # tokens per frame
    emission_weight: float = 1.0
    occluded_log_cost: float = -6.0  # log "cost" of the occluded state; a candidate must beat it
    enter_cost: float = 4.0
    leave_cost: float = 4.0
    background_weight: float = 0.5
    background_sigma: float = 0.1  # tokens per frame
    presence_weight: float = 1.0


def motion_log_prior(step: torch.Tensor, model: MotionModel, background_step: torch.Tensor | None = None):
    """Log prior of steps (..., 2) in tokens, up to a constant shared by all steps: the free Gaussian
    -|step|^2 / (2 sigma^2), or with a background component the better of the two weighted components,
    scaled so that the free one keeps that form."""
    import torch

    free = -step.square().sum(-1) * (1.0 / (2.0 * model.sigma ** 2))
    if not model.background_weight or background_step is None:
        return free
    ratio = (model.sigma / model.background_sigma) ** 2  # the densities' normalisers relative to the free one
    background = -(step - background_step).square().sum(-1) / (2.0 * model.background_sigma ** 2)
    free_share = math.log(1.0 - model.background_weight) if model.background_weight < 1 else -math.inf
    # The better component, not their log-sum: max-product like the Viterbi pass itself, and free of exp/log,
    # whose vectorised and scalar paths round differently (a point's bits would depend on the batch size).
    return torch.maximum(free + free_share, background + math.log(model.background_weight * ratio))


def outside_frame(xy: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Whether positions xy (..., 2) in tokens lie outside a frame of bounds (width, height) tokens."""
    return (xy[..., 0] < 0) | (xy[..., 0] > bounds[0]) | (xy[..., 1] < 0) | (xy[..., 1] > bounds[1])


def viterbi_decode(start: torch.Tensor, positions: torch.Tensor, costs: torch.Tensor,
                   model: MotionModel = MotionModel(), background_steps: torch.Tensor | None = None,
                   presence: torch.Tensor | None = None, start_hidden: torch.Tensor | None = None,
                   bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best path of N points through F frames.

    start (N, 2) token positions before the first frame (visible there unless ``start_hidden`` (N,) says
    otherwise); positions (N, F, K, 2) and costs (N, F, K) the candidates of each frame (cost in (0, 1]);
    background_steps (F, 2), the dominant motion from each frame's predecessor (the start for frame 0), used
    when ``model.background_weight`` > 0 and carried by occluded points; presence (N, F) in (0, 1], see the
    module docstring; bounds (width, height) of the frame in tokens.
    Returns positions (N, F, 2) and occluded (N, F) bool.
    """
    import torch

    n, frames, k = costs.shape
    dtype, device = positions.dtype, positions.device
    emission = costs.clamp_min(1e-12).log() * model.emission_weight
    if presence is not None and model.presence_weight:
        emission = emission + model.presence_weight * presence.clamp_min(1e-12).log()[..., None]
    # State s < k: candidate s; state k: occluded. Scores of the start: a single state.
    score = torch.zeros(n, 1, dtype=dtype, device=device)
    previous_xy = start.to(dtype)[:, None]  # (N, S_prev, 2)
    previous_occluded = torch.zeros(n, 1, dtype=torch.bool, device=device)
    if start_hidden is not None:
        previous_occluded = start_hidden.to(device)[:, None].clone()
    pointers, occluded_xy = [], []
    for f in range(frames):
        background_step = None if background_steps is None else background_steps[f]
        step = positions[:, f, None] - previous_xy[:, :, None]  # (N, S_prev, K, 2)
        prior = motion_log_prior(step, model, background_step)
        into_visible = score[:, :, None] + prior - previous_occluded[:, :, None] * model.leave_cost
        best_visible, from_visible = into_visible.max(1)  # (N, K)
        into_occluded = score - (~previous_occluded) * model.enter_cost  # staying occluded is free
        best_occluded, from_occluded = into_occluded.max(1)  # (N,)
        held = previous_xy.gather(1, from_occluded[:, None, None].expand(-1, 1, 2))[:, 0]
        hidden_cost = torch.full_like(best_occluded, model.occluded_log_cost)
        if background_step is not None:
            held = held + background_step.to(dtype)
            # the prior of the step it makes, as a visible point making it would pay
            hidden_cost = hidden_cost + motion_log_prior(background_step.to(dtype), model, background_step.to(dtype))
        if bounds is not None:
            hidden_cost = torch.where(outside_frame(held, bounds), hidden_cost - model.occluded_log_cost, hidden_cost)
        score = torch.cat([best_visible + emission[:, f], (best_occluded + hidden_cost)[:, None]], 1)
        occluded_xy.append(held)
        pointers.append(torch.cat([from_visible, from_occluded[:, None]], 1))  # (N, K + 1)
        previous_xy = torch.cat([positions[:, f], held[:, None]], 1)
        previous_occluded = torch.zeros(n, k + 1, dtype=torch.bool, device=device)
        previous_occluded[:, k] = True
    state = score.argmax(1)
    out_xy = torch.empty(n, frames, 2, dtype=dtype, device=device)
    out_occluded = torch.empty(n, frames, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    for f in range(frames - 1, -1, -1):
        hidden = state == k
        out_occluded[:, f] = hidden
        visible_xy = positions[rows, f, state.clamp_max(k - 1)]
        out_xy[:, f] = torch.where(hidden[:, None], occluded_xy[f], visible_xy)
        state = pointers[f][rows, state]
    return out_xy, out_occluded
