"""Pieces every backend shares: the result type, the joint-softmax algebra and the window soft-argmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MatchResult:
    """Correspondences and joint-attention scores of N query points against F target frames.

    See docs/ARCHITECTURE.md ("Kernel interface"). Float fields are float32 (float64 for float64 inputs).
    Without text keys the joint softmax runs over the video tokens alone and ``mass_text``/``max_text`` are 0.
    """

    argmax: torch.Tensor  # (N, F) int64, in-frame token index (row * grid_w + col)
    peak: torch.Tensor  # (N, F)
    refined: torch.Tensor  # (N, F, 2) token units, centres at j + 0.5
    mass_frames: torch.Tensor  # (N, F)
    mass_text: torch.Tensor  # (N,)
    max_frames: torch.Tensor  # (N, F)
    max_text: torch.Tensor  # (N,)
    # With ``candidates=K``: the K largest cost values of each (point, frame), best first, for temporal decoding.
    candidate_index: torch.Tensor | None = None  # (N, F, K) int64 in-frame token index
    candidate_cost: torch.Tensor | None = None  # (N, F, K)
    candidate_refined: torch.Tensor | None = None  # (N, F, K, 2) token units, soft-argmax around each


def top_candidates(cost: torch.Tensor, grid_h: int, grid_w: int, window: int, k: int):
    """The ``k`` best tokens of each cost map (..., P), their costs and soft-argmax positions (..., k, 2)."""
    values, index = cost.topk(min(k, cost.shape[-1]), dim=-1)
    around, valid, centres = window_tokens(index, grid_h, grid_w, window)  # (..., k, W)
    gathered = cost.gather(-1, around.flatten(-2)).view(around.shape)
    return index, values, soft_argmax(gathered, valid, centres.to(cost.dtype))


def accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 stays float64; every other float type accumulates in float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def joint_weights(frame_max: torch.Tensor, frame_sum: torch.Tensor, text_max: torch.Tensor | None,
                  text_sum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame softmax statistics -> joint-softmax scale factors, without another pass over the logits.

    ``frame_max``/``frame_sum`` (..., F) are each frame's logit max and sum of exp(logit - max); the
    text's are (...,). Returns ``frame_coef`` (..., F) = exp(max_f - M) / Z and ``text_coef`` (...,) =
    exp(max_text - M) / Z, where M is the overall max and Z the joint normaliser (relative to M), so
    the joint probability of a token of frame f is exp(logit - max_f) * frame_coef[f], and the joint
    mass on frame f is frame_sum[f] * frame_coef[f].
    """
    overall = frame_max.amax(-1)
    if text_max is not None:
        overall = torch.maximum(overall, text_max)
    frame_scaled = torch.exp(frame_max - overall.unsqueeze(-1))
    total = (frame_sum * frame_scaled).sum(-1)
    if text_max is not None:
        text_scaled = torch.exp(text_max - overall)
        total = total + text_sum * text_scaled
        text_coef = text_scaled / total
    else:
        text_coef = torch.zeros_like(total)
    return frame_scaled / total.unsqueeze(-1), text_coef


def window_tokens(argmax: torch.Tensor, grid_h: int, grid_w: int, window: int):
    """In-frame indices (..., K) of the (2 * window + 1)^2 tokens around each peak, their validity
    (False where the window leaves the grid) and their token-centre coordinates (..., K, 2) as (x, y)."""
    offsets = torch.arange(-window, window + 1, device=argmax.device)
    d_row, d_col = torch.meshgrid(offsets, offsets, indexing="ij")
    row = torch.div(argmax, grid_w, rounding_mode="floor").unsqueeze(-1) + d_row.reshape(-1)
    col = (argmax % grid_w).unsqueeze(-1) + d_col.reshape(-1)
    valid = (row >= 0) & (row < grid_h) & (col >= 0) & (col < grid_w)
    index = row.clamp(0, grid_h - 1) * grid_w + col.clamp(0, grid_w - 1)
    centres = torch.stack([col, row], dim=-1).to(torch.float32) + 0.5
    return index, valid, centres


def soft_argmax(values: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Probability-weighted mean of the window's token centres, ignoring tokens outside the grid."""
    weights = values * valid.to(values.dtype)
    return (weights.unsqueeze(-1) * centres.to(values.dtype)).sum(-2) / weights.sum(-1, keepdim=True)
