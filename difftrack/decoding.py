"""Temporal decoding of a track from per-frame match candidates: a hidden-Markov model solved by Viterbi.

Per frame the states are the K best tokens of the frame's cost map (each at its sub-token soft-argmax
position) plus one occluded state. A path pays, per frame:

- emission: ``emission_weight`` x log(cost) of the candidate it sits on, or ``occluded_log_cost`` on the
  occluded state (a point whose candidates are all weaker than that is better explained as hidden); a
  weight below 1 trusts the motion prior more than a model whose costs are weak;
- motion: |step|^2 / (2 sigma^2) in token units between consecutive visible positions (an occluded
  stretch keeps the position it entered with, and the step out of it is measured from there);
- switching: ``enter_cost`` to become occluded, ``leave_cost`` to reappear.

So a distractor peak far from the track's path loses to a slightly weaker peak on it. The first
frame of a segment is the known start (the query point, or the end of the previous window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MotionModel:
    sigma: float = 2.0  # tokens per frame
    emission_weight: float = 1.0
    occluded_log_cost: float = -6.0  # log "cost" of the occluded state; a candidate must beat it
    enter_cost: float = 4.0
    leave_cost: float = 4.0


def viterbi_decode(start: torch.Tensor, positions: torch.Tensor, costs: torch.Tensor,
                   model: MotionModel = MotionModel()) -> tuple[torch.Tensor, torch.Tensor]:
    """Best path of N points through F frames.

    start (N, 2) token positions before the first frame; positions (N, F, K, 2) and costs (N, F, K) the
    candidates of each frame (cost in (0, 1]). Returns positions (N, F, 2) and occluded (N, F) bool.
    """
    n, frames, k = costs.shape
    dtype, device = positions.dtype, positions.device
    emission = costs.clamp_min(1e-12).log() * model.emission_weight
    inv_two_var = 1.0 / (2.0 * model.sigma ** 2)
    # State s < k: candidate s; state k: occluded. Scores of the start: a single visible state.
    score = torch.zeros(n, 1, dtype=dtype, device=device)
    previous_xy = start.to(dtype)[:, None]  # (N, S_prev, 2)
    previous_occluded = torch.zeros(n, 1, dtype=torch.bool, device=device)
    pointers, occluded_xy = [], []
    for f in range(frames):
        step = (previous_xy[:, :, None] - positions[:, f, None]).square().sum(-1)  # (N, S_prev, K)
        into_visible = score[:, :, None] - step * inv_two_var - previous_occluded[:, :, None] * model.leave_cost
        best_visible, from_visible = into_visible.max(1)  # (N, K)
        into_occluded = score - (~previous_occluded) * model.enter_cost  # staying occluded is free
        best_occluded, from_occluded = into_occluded.max(1)  # (N,)
        score = torch.cat([best_visible + emission[:, f], (best_occluded + model.occluded_log_cost)[:, None]], 1)
        held = previous_xy.gather(1, from_occluded[:, None, None].expand(-1, 1, 2))  # position kept while hidden
        occluded_xy.append(held[:, 0])
        pointers.append(torch.cat([from_visible, from_occluded[:, None]], 1))  # (N, K + 1)
        previous_xy = torch.cat([positions[:, f], held], 1)
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
