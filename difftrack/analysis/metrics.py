"""Per (layer, step) reductions of captured descriptors, and their scores against ground-truth tracks.

Two stages, so that nothing dense outlives one captured layer:

1. :class:`StepReducer` is the capture's ``on_capture`` callback. For each captured (layer, step) it
   runs the fused kernel once for q-k (with the text keys, so the joint-softmax scores come out of
   the same pass) and once for the intermediate features, and keeps only a :class:`Reduction`:
   per query point and latent frame the refined correspondence, plus the joint-attention max and
   mass on text and on each frame - O(points x frames). The descriptors are dropped right after.
2. :func:`score_reduction` compares a reduction with ground-truth tracks of the same query points
   (frame-0 points, in input pixels) once the tracks are known.

Scoring rules (docs/method.md section 3):

- accuracy = PCK of the refined correspondence (sub-token soft-argmax around the peak) over
  ground-truth-visible (point, frame) pairs of every latent frame except the query frame; latent
  frame f is compared with RGB frame ``f * temporal_compression`` (CogVideoX: RGB 4f, frame 0 alone).
- two thresholds: ``pck`` = 8 px at 480x720 scaled with the video's resolution (geometric mean of
  the two axes), the paper's definition; ``pck_token`` = half a token of this model, which is the
  same 8 px for CogVideoX at 480x720 but stays meaningful for models whose tokens cover far fewer
  pixels (the embedded model's token is 4 px, where the resolution-scaled threshold is below 1 px).
- ``_moved`` variants count only pairs whose ground truth moved more than the threshold from the
  query position (:func:`~difftrack.evaluation.queries.moved_points`: in x or in y), where predicting
  "no motion" scores 0; ``zero_*`` is that no-motion baseline.
- feature matching uses the attention output before ``to_out`` (heads concatenated), matched through
  the same kernel (one "head", logit scale 1/sqrt(width)), so both descriptors get the same treatment.
- confidence = max joint probability (softmax over text + all video tokens, scaled by 1/sqrt(d),
  head-averaged) on text, on the query's own frame, and on each other frame where the point is
  visible (averaged over those frames); attention = total joint mass on text, own frame and all
  other frames together. Averaged over query points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from difftrack.capture import Descriptors, sample_descriptors
from difftrack.evaluation.queries import moved_points
from difftrack.geometry import TokenGeometry
from difftrack.kernels import match

REFERENCE_THRESHOLD_PX = 8.0
REFERENCE_SIZE = (480, 720)
DESCRIPTORS = ("qk", "feat")
THRESHOLDS = ("pck", "pck_token")
ACCURACY_METRICS = tuple(f"{d}_{t}{s}" for d in DESCRIPTORS for t in THRESHOLDS for s in ("", "_moved"))
BASELINE_METRICS = tuple(f"zero_{t}" for t in THRESHOLDS)
SCORE_METRICS = ("conf_text", "conf_own", "conf_cross", "attn_text", "attn_own", "attn_cross")
METRICS = ACCURACY_METRICS + SCORE_METRICS
METRIC_LABELS = {
    **{f"{d}_{t}{s}": f"{'query-key' if d == 'qk' else 'feature'} matching accuracy "
                      f"({'8 px @480x720' if t == 'pck' else 'half a token'}{', moved points' if s else ''})"
       for d in DESCRIPTORS for t in THRESHOLDS for s in ("", "_moved")},
    "zero_pck": "no-motion baseline accuracy (8 px @480x720)",
    "zero_pck_token": "no-motion baseline accuracy (half a token)",
    "conf_text": "confidence on text (max joint probability)",
    "conf_own": "confidence on own frame",
    "conf_cross": "confidence on other frames (visible points)",
    "attn_text": "attention mass on text",
    "attn_own": "attention mass on own frame",
    "attn_cross": "attention mass on all other frames",
}


def pck_thresholds(geometry: TokenGeometry, height: int, width: int) -> dict[str, float]:
    """Pixel thresholds of both accuracy definitions for a video of ``height`` x ``width`` pixels."""
    scale = math.sqrt(height * width / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1]))
    token = math.sqrt(geometry.stride_px[0] * geometry.stride_px[1])
    return {"pck": REFERENCE_THRESHOLD_PX * scale, "pck_token": 0.5 * token}


@dataclass
class Reduction:
    """What is kept of one (layer, step): O(points x latent frames)."""

    qk_xy: np.ndarray  # (N, F, 2) refined correspondence, token units
    feat_xy: np.ndarray | None  # (N, F, 2) or None when features were not captured
    max_text: np.ndarray  # (N,)
    max_frames: np.ndarray  # (N, F)
    mass_text: np.ndarray  # (N,)
    mass_frames: np.ndarray  # (N, F)


class StepReducer:
    """``on_capture`` callback: reduce each captured (layer, step) to a :class:`Reduction` right away.

    ``query_xy`` (N, 2) token coordinates of frame-0 query points. ``figure`` optionally names
    (layer, step) pairs for which attention maps of ``figure_points`` on ``figure_frames`` and a
    3-component PCA of q and k are kept as well (small, for the report's figures).
    """

    def __init__(self, geometry: TokenGeometry, query_xy: np.ndarray, window: int = 1, backend: str = "auto",
                 figure: set[tuple[int, int]] | None = None, figure_points: list[int] | None = None,
                 figure_frames: list[int] | None = None, bidirectional: bool = True):
        self.geometry = geometry
        self.query_xy = torch.as_tensor(np.asarray(query_xy), dtype=torch.float32)
        self.bidirectional = bidirectional
        # the token under each query, where the reverse direction's softmax over frame 0 is read
        self.query_token = torch.from_numpy(geometry.nearest_token(geometry.token_to_pixel(np.asarray(query_xy))))
        self.window = window
        self.backend = backend
        self.figure = figure or set()
        self.figure_points = figure_points or []
        self.figure_frames = figure_frames or []
        self.reductions: dict[tuple[int, int], Reduction] = {}
        self.figures: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def __call__(self, desc: Descriptors) -> bool:
        self.reductions[(desc.layer, desc.step)] = self.reduce(desc)
        if (desc.layer, desc.step) in self.figure:
            self.figures[(desc.layer, desc.step)] = self.figure_arrays(desc)
        return True  # consumed: the capture keeps nothing

    def _frame_queries(self, all_tokens: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        p = g.tokens_per_frame
        frame = all_tokens[:, :p]  # queries live on frame 0
        return sample_descriptors(frame, self.query_xy, (g.grid_h, g.grid_w))

    @torch.no_grad()
    def reduce(self, desc: Descriptors) -> Reduction:
        g = self.geometry
        grid = (g.grid_h, g.grid_w)
        q, k = desc.query[0], desc.key[0]
        text_k = None if desc.text_key is None else desc.text_key[0]
        reverse = (q, self.query_token.to(q.device)) if self.bidirectional else None
        qk = match(self._frame_queries(q), k, grid, 0, text_key=text_k, window=self.window, reverse=reverse,
                   backend=self.backend)
        feat_xy = None
        if desc.feature is not None:
            feat = desc.feature[0].unsqueeze(0)  # one "head" of width H * D
            fm = match(self._frame_queries(feat), feat, grid, 0, window=self.window,
                       backend=self.backend)
            feat_xy = _numpy(fm.refined)
        return Reduction(qk_xy=_numpy(qk.refined), feat_xy=feat_xy, max_text=_numpy(qk.max_text),
                         max_frames=_numpy(qk.max_frames), mass_text=_numpy(qk.mass_text),
                         mass_frames=_numpy(qk.mass_frames))

    @torch.no_grad()
    def figure_arrays(self, desc: Descriptors) -> dict[str, np.ndarray]:
        """Per-frame attention maps (head-averaged softmax over each target frame) of the figure points,
        and the first three principal components of q and k of every token on the figure frames."""
        g = self.geometry
        p = g.tokens_per_frame
        q, k = desc.query[0].float(), desc.key[0].float()
        out: dict[str, np.ndarray] = {}
        if self.figure_points:
            pts = self._frame_queries(q)[:, self.figure_points]  # (H, n, D)
            maps = []
            for f in self.figure_frames:
                logits = torch.einsum("hnd,hpd->hnp", pts, k[:, f * p:(f + 1) * p]) / math.sqrt(q.shape[-1])
                maps.append(logits.softmax(-1).mean(0).reshape(-1, g.grid_h, g.grid_w))
            out["attention_maps"] = _numpy(torch.stack(maps, 1))  # (n, frames, gh, gw)
        for name, d in (("q", q), ("k", k)):
            tokens = torch.cat([d[:, f * p:(f + 1) * p] for f in self.figure_frames], 1)  # (H, n_f * P, D)
            flat = tokens.permute(1, 0, 2).reshape(tokens.shape[1], -1)
            flat = flat - flat.mean(0, keepdim=True)
            _, _, v = torch.linalg.svd(flat, full_matrices=False)
            comps = flat @ v[:3].T
            out[f"pca_{name}"] = _numpy(comps.reshape(len(self.figure_frames), g.grid_h, g.grid_w, -1))
        return out


def score_reduction(red: Reduction, geometry: TokenGeometry, tracks: np.ndarray, visible: np.ndarray,
                    thresholds: dict[str, float]) -> dict[str, float]:
    """Metrics of one (layer, step). ``tracks`` (T, N, 2) input pixels and ``visible`` (T, N) of the query points.

    Metrics with nothing to count (say, no moved visible point) are NaN.
    """
    frames = [f for f in range(geometry.frames) if f != 0]
    rgb = [int(geometry.latent_to_rgb_frame(f)) for f in frames]
    gt = tracks[rgb].transpose(1, 0, 2)  # (N, F-1, 2)
    vis = visible[rgb].T  # (N, F-1)
    start = tracks[0]
    zero_motion_error = np.linalg.norm(gt - start[:, None], axis=-1)
    out: dict[str, float] = {}
    predictions = {"qk": red.qk_xy, "feat": red.feat_xy}
    for name, thr in thresholds.items():
        for kind, xy in predictions.items():
            if xy is None:
                continue
            err = np.linalg.norm(geometry.token_to_pixel(xy[:, frames]) - gt, axis=-1)
            out[f"{kind}_{name}"] = _mean(err < thr, vis)
            out[f"{kind}_{name}_moved"] = _mean(err < thr, vis & moved_points(gt, start, thr))
        out[f"zero_{name}"] = _mean(zero_motion_error < thr, vis)
    other = np.array(frames, dtype=np.int64)
    cross_vis = vis.astype(np.float64)
    per_point_conf = (red.max_frames[:, other] * cross_vis).sum(1) / np.maximum(cross_vis.sum(1), 1)
    has_visible = cross_vis.sum(1) > 0
    out["conf_text"] = float(red.max_text.mean())
    out["conf_own"] = float(red.max_frames[:, 0].mean())
    out["conf_cross"] = float(per_point_conf[has_visible].mean()) if has_visible.any() else float("nan")
    out["attn_text"] = float(red.mass_text.mean())
    out["attn_own"] = float(red.mass_frames[:, 0].mean())
    out["attn_cross"] = float(red.mass_frames[:, other].sum(1).mean())
    return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy copy of a tensor on any device (reductions are kept on the CPU)."""
    return t.detach().float().cpu().numpy()


def _mean(hit: np.ndarray, mask: np.ndarray) -> float:
    n = int(mask.sum())
    return float((hit & mask).sum() / n) if n else float("nan")
