import math

import numpy as np
import pytest

from difftrack.evaluation.metrics import (METRIC_NAMES, THRESHOLDS, average_over_videos, compute_tapvid_metrics,
                               scored_frames)


def _jaccards(metrics):
    return [metrics[f"jaccard_{d}"] for d in THRESHOLDS]


def _within(metrics):
    return [metrics[f"pts_within_{d}"] for d in THRESHOLDS]


def test_scored_frames_first_is_strictly_after_and_strided_is_all_but_the_query_frame():
    assert scored_frames(np.array([1, 0, 3]), 4, "first").tolist() == [
        [False, False, True, True], [False, True, True, True], [False, False, False, False]]
    assert scored_frames(np.array([1, 0, 3]), 4, "strided").tolist() == [
        [True, False, True, True], [False, True, True, True], [True, True, True, False]]


# One query at frame 1 of a 4-frame video; ground truth sits at (10, 10) and is occluded on frame 2.
# Prediction: frame 0 exact, frame 2 predicted visible (a false positive: gt occluded), frame 3 3 px
# off in x and predicted visible (squared distance 9: within 4, 8, 16 px, not within 1 or 2).
QUERY = np.array([[1, 10.0, 10.0]], np.float32)
GT_TRACKS = np.full((1, 4, 2), 10.0, np.float32)
GT_OCCLUDED = np.array([[False, False, True, False]])
PRED_TRACKS = np.array([[[10, 10], [10, 10], [10, 10], [13, 10]]], np.float32)
PRED_OCCLUDED = np.zeros((1, 4), bool)


def test_hand_computed_first_mode_scores_only_frames_after_the_query():
    m = compute_tapvid_metrics(QUERY, GT_OCCLUDED, GT_TRACKS, PRED_OCCLUDED, PRED_TRACKS, "first")
    # Scored frames 2 and 3: occlusion right on 3 only.
    assert m["occlusion_accuracy"] == pytest.approx(0.5)
    # The only gt-visible scored point is frame 3, 3 px away.
    assert _within(m) == [0, 0, 1, 1, 1]
    assert m["average_pts_within_thresh"] == pytest.approx(0.6)
    # d in {1, 2}: TP 0, FP 2 (frame 2 gt occluded, frame 3 too far) -> 0 / (1 + 2).
    # d >= 4: TP 1, FP 1 (frame 2) -> 1 / (1 + 1).
    assert _jaccards(m) == pytest.approx([0, 0, 0.5, 0.5, 0.5])
    assert m["average_jaccard"] == pytest.approx(0.3)


def test_hand_computed_strided_mode_also_scores_frames_before_the_query():
    m = compute_tapvid_metrics(QUERY, GT_OCCLUDED, GT_TRACKS, PRED_OCCLUDED, PRED_TRACKS, "strided")
    # Scored frames 0, 2, 3: occlusion right on 0 and 3.
    assert m["occlusion_accuracy"] == pytest.approx(2 / 3)
    # gt-visible scored points: frame 0 (exact) and frame 3 (3 px).
    assert _within(m) == pytest.approx([0.5, 0.5, 1, 1, 1])
    # d in {1, 2}: TP 1, FP 2 -> 1 / (2 + 2); d >= 4: TP 2, FP 1 -> 2 / (2 + 1).
    assert _jaccards(m) == pytest.approx([0.25, 0.25, 2 / 3, 2 / 3, 2 / 3])
    assert m["average_jaccard"] == pytest.approx((0.25 * 2 + 2 / 3 * 3) / 5)


def test_predicted_occlusion_of_a_visible_point_costs_jaccard_and_occlusion_accuracy_not_position():
    query = np.array([[0, 5.0, 5.0]], np.float32)
    gt = np.full((1, 3, 2), 5.0, np.float32)
    gt_occluded = np.zeros((1, 3), bool)
    pred_occluded = np.array([[False, False, True]])
    m = compute_tapvid_metrics(query, gt_occluded, gt, pred_occluded, gt.copy(), "first")
    assert m["occlusion_accuracy"] == pytest.approx(0.5)
    assert _within(m) == [1, 1, 1, 1, 1]
    # Frame 2 is gt-visible and exact but predicted occluded: no TP, no FP -> 1 / (2 + 0).
    assert _jaccards(m) == pytest.approx([0.5] * 5)


def test_distance_threshold_is_strict():
    query = np.array([[0, 0.0, 0.0]], np.float32)
    gt = np.zeros((1, 2, 2), np.float32)
    pred = np.array([[[0, 0], [0, 2]]], np.float32)  # exactly 2 px off on the scored frame
    m = compute_tapvid_metrics(query, np.zeros((1, 2), bool), gt, np.zeros((1, 2), bool), pred, "first")
    assert _within(m) == [0, 0, 1, 1, 1]


def test_points_are_pooled_over_queries_of_a_video_not_averaged_per_query():
    queries = np.array([[0, 0, 0], [0, 0, 0]], np.float32)
    gt = np.zeros((2, 4, 2), np.float32)
    pred = gt.copy()
    pred[1, 1:] = 100.0  # query 0 right on its 3 scored frames, query 1 wrong on its 3
    gt_occluded = np.array([[False, True, True, False], [False, False, False, False]])
    m = compute_tapvid_metrics(queries, gt_occluded, gt, np.zeros((2, 4), bool), pred, "first")
    # gt-visible scored points: query 0 frame 3, query 1 frames 1-3 -> 1 of 4 correct (not mean(1, 0)).
    assert m["pts_within_1"] == pytest.approx(0.25)
    # TP 1; FP: query 0 frames 1, 2 (gt occluded) + query 1 frames 1-3 (far) = 5 -> 1 / (4 + 5).
    assert m["jaccard_1"] == pytest.approx(1 / 9)


def _naive_metrics(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks, mode):
    """The docs/method.md definitions, one point at a time."""
    counts = {"scored": 0, "occ_right": 0, "visible": 0}
    per_d = {d: {"within": 0, "tp": 0, "fp": 0} for d in THRESHOLDS}
    for q in range(len(query_points)):
        tq = int(query_points[q, 0])
        for t in range(gt_occluded.shape[1]):
            if (mode == "first" and t <= tq) or (mode == "strided" and t == tq):
                continue
            counts["scored"] += 1
            counts["occ_right"] += int(pred_occluded[q, t] == gt_occluded[q, t])
            counts["visible"] += int(not gt_occluded[q, t])
            dx, dy = pred_tracks[q, t] - gt_tracks[q, t]
            for d in THRESHOLDS:
                within = dx * dx + dy * dy < d * d
                per_d[d]["within"] += int(within and not gt_occluded[q, t])
                per_d[d]["tp"] += int(within and not gt_occluded[q, t] and not pred_occluded[q, t])
                per_d[d]["fp"] += int(not pred_occluded[q, t] and (gt_occluded[q, t] or not within))
    out = {"occlusion_accuracy": counts["occ_right"] / counts["scored"]}
    for d in THRESHOLDS:
        out[f"pts_within_{d}"] = per_d[d]["within"] / counts["visible"]
        out[f"jaccard_{d}"] = per_d[d]["tp"] / (counts["visible"] + per_d[d]["fp"])
    out["average_pts_within_thresh"] = np.mean([out[f"pts_within_{d}"] for d in THRESHOLDS])
    out["average_jaccard"] = np.mean([out[f"jaccard_{d}"] for d in THRESHOLDS])
    return out


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_matches_a_point_by_point_reference_on_random_data(mode):
    rng = np.random.default_rng(0)
    num_queries, num_frames = 7, 9
    gt_tracks = rng.uniform(0, 256, (num_queries, num_frames, 2)).astype(np.float32)
    pred_tracks = gt_tracks + rng.normal(0, 6, gt_tracks.shape).astype(np.float32)
    gt_occluded = rng.random((num_queries, num_frames)) < 0.3
    pred_occluded = rng.random((num_queries, num_frames)) < 0.3
    queries = np.stack([rng.integers(0, num_frames - 1, num_queries), rng.uniform(0, 256, num_queries),
                        rng.uniform(0, 256, num_queries)], -1).astype(np.float32)
    got = compute_tapvid_metrics(queries, gt_occluded, gt_tracks, pred_occluded, pred_tracks, mode)
    want = _naive_metrics(queries, gt_occluded, gt_tracks, pred_occluded, pred_tracks, mode)
    assert list(got) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_undefined_metric_is_nan_and_left_out_of_the_average():
    # Queried on the last frame in 'first' mode: nothing is scored.
    m = compute_tapvid_metrics(np.array([[1, 0, 0]], np.float32), np.zeros((1, 2), bool), np.zeros((1, 2, 2)),
                               np.zeros((1, 2), bool), np.zeros((1, 2, 2)), "first")
    assert all(math.isnan(m[name]) for name in METRIC_NAMES)
    defined = {name: 0.5 for name in METRIC_NAMES}
    other = {name: 1.0 for name in METRIC_NAMES}
    assert average_over_videos([defined, m, other]) == pytest.approx({name: 0.75 for name in METRIC_NAMES})


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_tapvid_metrics(np.zeros((1, 3)), np.zeros((1, 4), bool), np.zeros((1, 4, 2)),
                               np.zeros((1, 3), bool), np.zeros((1, 4, 2)), "first")
