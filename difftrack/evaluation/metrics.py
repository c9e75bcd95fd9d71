"""TAP-Vid metrics, exactly as docs/method.md section 6 defines them (tapnet's names and definitions).

All coordinates are raster pixels at the evaluation resolution. One call scores one video: every
query's scored frames are pooled, then ``average_over_videos`` takes the mean over videos.

- Frames scored: 'first' = frames strictly after the query frame; 'strided' = every frame except it.
- occlusion_accuracy: mean of (pred_occluded == gt_occluded) over scored frames.
- pts_within_d: among gt-visible scored points, fraction with squared distance < d^2;
  average_pts_within_thresh is their mean over d in {1, 2, 4, 8, 16}.
- jaccard_d = TP / (gt-visible + FP); TP: gt-visible, within d, predicted visible; FP: predicted
  visible and (gt occluded or not within d). average_jaccard is their mean.

A metric whose denominator is zero for a video (for example no gt-visible scored point) is NaN for
that video and that video is left out of that metric's average.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
METRIC_NAMES = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy",
                *(f"pts_within_{d}" for d in THRESHOLDS), *(f"jaccard_{d}" for d in THRESHOLDS))
QUERY_MODES = ("first", "strided")
# (table label, metric) of every summary table, in column order
SUMMARY_COLUMNS = (("AJ", "average_jaccard"), ("delta_avg", "average_pts_within_thresh"),
                   ("OA", "occlusion_accuracy"), *((f"delta_{d}", f"pts_within_{d}") for d in THRESHOLDS),
                   *((f"J_{d}", f"jaccard_{d}") for d in THRESHOLDS))


def scored_frames(query_frames: np.ndarray, num_frames: int, mode: str) -> np.ndarray:
    """bool (Q, T): which frames count for each query, given its query frame."""
    if mode not in QUERY_MODES:
        raise ValueError(f"query mode must be one of {QUERY_MODES}, got {mode!r}")
    query_frames = np.round(np.asarray(query_frames)).astype(np.int64)
    frames = np.arange(num_frames)[None, :]
    if mode == "first":
        return frames > query_frames[:, None]
    return frames != query_frames[:, None]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def compute_tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                           pred_occluded: np.ndarray, pred_tracks: np.ndarray, mode: str) -> dict[str, float]:
    """Metrics of one video.

    query_points (Q, 3) as (t, x, y) (only t is used); gt_occluded / pred_occluded bool (Q, T);
    gt_tracks / pred_tracks (Q, T, 2) raster (x, y). Returns {name: value in [0, 1] or NaN}.
    """
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    pred_occluded = np.asarray(pred_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    if not (gt_occluded.shape == pred_occluded.shape == gt_tracks.shape[:2] == pred_tracks.shape[:2]):
        raise ValueError(f"shape mismatch: gt_occluded {gt_occluded.shape}, pred_occluded {pred_occluded.shape}, "
                         f"gt_tracks {gt_tracks.shape}, pred_tracks {pred_tracks.shape}")
    scored = scored_frames(np.asarray(query_points)[:, 0], gt_occluded.shape[1], mode)
    gt_visible = ~gt_occluded & scored
    pred_visible = ~pred_occluded & scored
    squared_distance = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)

    metrics = {"occlusion_accuracy": _ratio(np.sum((pred_occluded == gt_occluded) & scored), np.sum(scored))}
    for d in THRESHOLDS:
        within = squared_distance < d * d
        correct = within & gt_visible
        metrics[f"pts_within_{d}"] = _ratio(np.sum(correct), np.sum(gt_visible))
        true_positives = np.sum(correct & pred_visible)
        false_positives = np.sum(pred_visible & (gt_occluded | ~within))
        metrics[f"jaccard_{d}"] = _ratio(true_positives, np.sum(gt_visible) + false_positives)
    metrics["average_pts_within_thresh"] = float(np.mean([metrics[f"pts_within_{d}"] for d in THRESHOLDS]))
    metrics["average_jaccard"] = float(np.mean([metrics[f"jaccard_{d}"] for d in THRESHOLDS]))
    return {name: metrics[name] for name in METRIC_NAMES}


def average_over_videos(per_video: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the videos where it is defined (NaN if it is defined for none)."""
    averaged = {}
    for name in METRIC_NAMES:
        values = np.array([m[name] for m in per_video], dtype=np.float64)
        values = values[~np.isnan(values)]
        averaged[name] = float(values.mean()) if len(values) else float("nan")
    return averaged
