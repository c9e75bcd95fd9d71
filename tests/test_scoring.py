"""difftrack.evaluation: scoring a tracker (against a naive scoring written from the definitions), its query grids
and moved points, the shard-and-resume store, the TAP-Vid dataset loop, and the seed ranges."""

import json
import math

import numpy as np
import pytest
from test_metrics import _naive_metrics

from difftrack.baselines import BASELINES, zero_motion
from difftrack.data.synthetic import generate_clip, to_tapvid
from difftrack.errors import UserError
from difftrack.evaluation import seeds
from difftrack.evaluation.metrics import METRIC_NAMES
from difftrack.evaluation.protocols import to_protocol
from difftrack.evaluation.queries import moved_points, query_grid, token_grid
from difftrack.evaluation.scoring import LabelledVideo, recorded, score_dataset, score_tracker
from difftrack.evaluation.store import ResultStore, my_share


def _video(seed, frames=10, height=48, width=80, points=12):
    """A generator clip with TAP-Vid-style ground truth in its own pixels (frames, points (N, T, 2), occluded)."""
    sample = to_tapvid(generate_clip(seed, num_frames=frames, height=height, width=width), points, seed)
    return sample["video"], sample["points"] * np.float32([width, height]), sample["occluded"]


def _naive_queries(points, occluded, protocol):
    """(query (t, x, y), track) pairs as the protocols define them, one track and frame at a time."""
    chosen = []
    if protocol == "strided":
        for t in range(0, occluded.shape[1], 5):
            chosen += [(t, n) for n in range(len(points)) if not occluded[n, t]]
    for n in range(len(points)):
        visible = [t for t in range(occluded.shape[1]) if not occluded[n, t]]
        if protocol == "first" and visible:
            chosen.append((visible[0], n))
        if protocol == "release" and 0 in visible:
            chosen.append((0, n))
    return [((t, *points[n, t]), n) for t, n in chosen]


def _naive_score(tracker, frames, points, occluded, protocol, score_size=None, moved_distance=None):
    pairs = _naive_queries(points, occluded, protocol)
    queries = np.array([q for q, _ in pairs], np.float32)
    tracks, visible = tracker(frames, queries)
    tracks, pred_occluded = tracks.transpose(1, 0, 2), ~visible.T
    truth, gt_occluded = points[[n for _, n in pairs]], occluded[[n for _, n in pairs]]
    scale = np.float32([1, 1] if score_size is None else [score_size / frames.shape[2], score_size / frames.shape[1]])
    queries = np.concatenate([queries[:, :1], queries[:, 1:] * scale], 1)
    truth, tracks = truth * scale, tracks * scale
    mode = "first" if protocol == "release" else protocol
    out = {"metrics": _naive_metrics(queries, gt_occluded, truth, pred_occluded, tracks, mode)}
    if moved_distance is not None:
        moved = np.zeros_like(gt_occluded)
        within = total = 0
        for q in range(len(queries)):
            for t in range(gt_occluded.shape[1]):
                dx, dy = np.abs(truth[q, t] - queries[q, 1:])
                moved[q, t] = max(dx, dy) > moved_distance
                if moved[q, t] and not gt_occluded[q, t]:
                    total += 1
                    within += int(np.abs(tracks[q, t] - truth[q, t]).max() <= moved_distance)
        out["moved_metrics"] = _naive_metrics(queries, gt_occluded | ~moved, truth, pred_occluded, tracks, mode)
        out["moved_within"] = within / total
    return out


def _assert_metrics(got, want):
    assert list(got) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("tracker", ["zero_motion", "lucas_kanade"])
@pytest.mark.parametrize("protocol", ["first", "strided", "release"])
def test_score_tracker_matches_a_naive_scoring_of_the_protocol(protocol, tracker):
    frames, points, occluded = _video(5)
    score = score_tracker(BASELINES[tracker], LabelledVideo(frames, points, occluded), protocol, moved_distance=4.0)
    want = _naive_score(BASELINES[tracker], frames, points, occluded, protocol, moved_distance=4.0)
    _assert_metrics(score.metrics, want["metrics"])
    _assert_metrics(score.moved_metrics, want["moved_metrics"])
    assert score.moved_within == pytest.approx(want["moved_within"], abs=1e-12)
    if tracker == "zero_motion":
        assert score.moved_within == 0  # a point that stays in place is never within reach of a moved point


def test_given_queries_are_scored_at_the_score_size_and_median_errors_are_in_the_video_pixels():
    """As `difftrack track --gt` scores: the video's own queries, coordinates scaled to 256x256 for the metrics."""
    frames, points, occluded = _video(6, height=40, width=96)
    first_visible = (~occluded).argmax(1)
    keep = (~occluded).any(1)
    points, occluded, first_visible = points[keep], occluded[keep], first_visible[keep]
    queries = np.concatenate([first_visible[:, None], points[np.arange(len(points)), first_visible]], 1)
    video = LabelledVideo(frames, points, occluded, queries=queries.astype(np.float32))
    score = score_tracker(BASELINES["lucas_kanade"], video, "first", score_size=256)
    _assert_metrics(score.metrics, _naive_score(BASELINES["lucas_kanade"], frames, points, occluded, "first",
                                                score_size=256)["metrics"])
    tracks, visible = BASELINES["lucas_kanade"](frames, queries.astype(np.float32))
    errors = score.videos[0].median_error()
    for t, error in enumerate(errors):
        shown = ~occluded[:, t]
        want = np.median(np.hypot(*(tracks[t] - points[:, t])[shown].T)) if shown.any() else None
        assert error == pytest.approx(want, abs=1e-4) if want is not None else error is None


def test_a_dataset_averages_its_videos_where_each_metric_is_defined_and_pools_moved_points():
    videos = [LabelledVideo(*_video(seed), name=str(seed)) for seed in (1, 2, 3)]
    score = score_tracker(BASELINES["lucas_kanade"], videos, "strided", moved_distance=4.0)
    singles = [score_tracker(BASELINES["lucas_kanade"], video, "strided", moved_distance=4.0) for video in videos]
    assert [v.name for v in score.videos] == ["1", "2", "3"]
    for name in METRIC_NAMES:
        values = [s.metrics[name] for s in singles if not math.isnan(s.metrics[name])]
        assert score.metrics[name] == pytest.approx(np.mean(values), abs=1e-12)
    within, total = np.sum([s.videos[0].moved_counts for s in singles], axis=0)
    assert score.moved_within == within / total


def test_moved_point_counts_score_only_visible_points_more_than_the_distance_from_their_query():
    frames = np.zeros((4, 64, 96, 3), np.uint8)
    points = np.array([[[10.0, 10.0], [30.0, 10.0], [50.0, 10.0], [70.0, 10.0]]], np.float32)
    occluded = np.array([[False, False, False, True]])
    prediction = recorded(np.array([[[10.0, 10.0]], [[40.0, 12.0]], [[10.0, 10.0]], [[70.0, 10.0]]], np.float32),
                          np.ones((4, 1), bool))
    score = score_tracker(prediction, LabelledVideo(frames, points, occluded, queries=np.float32([[0, 10, 10]])),
                          "first", moved_distance=16.0)
    # frame 0 has not moved and frame 3 is hidden; frame 1 is within 16 px of the truth, frame 2 is not
    assert score.videos[0].moved_counts.tolist() == [1, 2]


def test_per_track_predictions_come_from_each_tracks_first_query():
    frames, points, occluded = _video(4, points=6)
    occluded[2] = True  # never visible: never queried
    video = score_tracker(BASELINES["lucas_kanade"], LabelledVideo(frames, points, occluded), "strided").videos[0]
    tracks, track_occluded = video.per_track(len(points))
    assert (tracks[2] == 0).all() and track_occluded[2].all()
    for n in set(video.queries.track_index.tolist()):
        first = video.queries.track_index.tolist().index(n)
        assert np.array_equal(tracks[n], video.tracks[first]) and np.array_equal(track_occluded[n], video.occluded[first])


def test_a_recorded_tracker_refuses_queries_it_has_no_prediction_for():
    tracker = recorded(np.zeros((4, 2, 2), np.float32), np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="do not fit"):
        tracker(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((3, 3), np.float32))


# ----- query grids and moved points --------------------------------------------------------------

def test_query_grid_puts_a_point_at_the_centre_of_every_cell_row_by_row():
    grid = query_grid(2, 10, 20, frame=3)
    assert grid.tolist() == [[3, 5, 2.5], [3, 15, 2.5], [3, 5, 7.5], [3, 15, 7.5]]


def test_token_grid_snaps_to_distinct_token_centres_row_by_row():
    assert token_grid(2, 16, 16).tolist() == [[4.5, 4.5], [12.5, 4.5], [4.5, 12.5], [12.5, 12.5]]
    every = token_grid(20, 9, 9)  # more points than tokens: each token once
    assert len(every) == 81 and len(np.unique(every, axis=0)) == 81
    assert np.array_equal(every[:, 1], np.sort(every[:, 1]))  # rows in order
    assert set(every.ravel().tolist()) == {j + 0.5 for j in range(9)}


def test_a_point_has_moved_once_it_leaves_the_square_of_the_distance_around_its_query():
    query = np.array([[10.0, 10.0]])
    tracks = np.array([[[10.0, 10.0], [10.9, 10.9], [11.1, 10.0], [10.0, 8.9], [10.0, 11.0]]])
    assert moved_points(tracks, query, 1.0).tolist() == [[False, False, True, True, False]]


def test_the_matching_targets_are_every_other_token_and_their_moved_points():
    from difftrack.evaluation.matching import clip_targets

    clip = generate_clip(21, num_frames=5, height=64, width=64)
    query_index, true_tok, visible, moved = clip_targets(clip, 16, 4.0)
    rows, cols = np.divmod(query_index, 16)
    assert sorted(set(rows.tolist())) == sorted(set(cols.tolist())) == list(range(1, 16, 2)) and len(query_index) == 64
    truth, shown = clip.track(np.stack([np.zeros(64), (cols + 0.5) * 4, (rows + 0.5) * 4], -1))
    assert np.array_equal(true_tok, truth / 4.0)
    assert not visible[:, 0].any() and np.array_equal(visible[:, 1:], shown[:, 1:])
    start = np.stack([cols + 0.5, rows + 0.5], -1)[:, None]
    assert np.array_equal(moved, np.maximum(*np.abs(true_tok - start).transpose(2, 0, 1)) > 1.0)


# ----- the store and the dataset loop --------------------------------------------------------------

def test_the_store_round_trips_records_and_arrays_exactly_and_refuses_another_run(tmp_path):
    store = ResultStore(tmp_path / "items", {"model": "m", "layers": (0, 1)})
    store.check()
    assert not (tmp_path / "items").exists() and store.load("a") is None
    arrays = {"x": np.array([0.1, np.nan, 1e-300]), "flags": np.array([True, False])}
    store.save("a", {"name": "first", "value": 0.1}, arrays)
    store.check()  # the same run, tuples compared as JSON keeps them
    assert store.load("a") == {"name": "first", "value": 0.1}
    loaded = store.arrays("a")
    assert all(np.array_equal(loaded[k], v, equal_nan=v.dtype.kind == "f") and loaded[k].dtype == v.dtype
               for k, v in arrays.items())
    assert sorted(p.name for p in (tmp_path / "items").iterdir()) == ["a.json", "a.npz", "run.json"]
    with pytest.raises(UserError, match="holds results of another run"):
        ResultStore(tmp_path / "items", {"model": "other", "layers": (0, 1)}).check()
    (tmp_path / "items" / "run.json").unlink()
    with pytest.raises(UserError, match="unknown run"):
        store.check()


def test_each_rank_takes_every_world_th_item():
    assert list(my_share("abcde", 1, 2)) == [(1, "b"), (3, "d")]
    assert list(my_share("abc", 0, 1)) == [(0, "a"), (1, "b"), (2, "c")]


@pytest.fixture(scope="module")
def entries():
    """Three TAP-Vid-style videos as a reader's (name, load) entries, normalised points at 64x64."""
    out = []
    for seed in (11, 12, 13):
        sample = to_tapvid(generate_clip(seed, num_frames=6, height=64, width=64), 8, seed)
        out.append((f"v{seed}", lambda sample=sample: _Sample(sample)))
    return out


class _Sample:
    def __init__(self, sample):
        self.video, self.points, self.occluded = sample["video"], sample["points"], sample["occluded"]


def test_the_dataset_loop_scores_each_video_at_the_protocol_size(entries, tmp_path):
    trackers = {"zero_motion": zero_motion, "lucas_kanade": BASELINES["lucas_kanade"]}
    runs = {name: {"tracker": name} for name in trackers}
    videos = score_dataset(trackers, entries, "strided", tmp_path / "partial", runs, progress=False)
    assert [(name, num_tracks) for name, num_tracks, _ in videos] == [("v11", 8), ("v12", 8), ("v13", 8)]
    for (name, load), (_, _, scores) in zip(entries, videos):
        sample = load()
        frames, points = to_protocol(sample.video, sample.points)
        for tracker in trackers:
            alone = score_tracker(trackers[tracker], LabelledVideo(frames, points, sample.occluded), "strided")
            assert json.dumps(scores[tracker].metrics) == json.dumps(alone.metrics)


def test_the_dataset_loop_resumes_exactly_where_it_stopped(entries, tmp_path):
    calls = []

    def counting(name, stop_on_call=None):
        def tracker(video, queries):
            calls.append(name)
            if len(calls) == stop_on_call:
                raise KeyboardInterrupt
            return BASELINES[name](video, queries)
        return tracker

    runs = {"zero_motion": {"a": 1}, "lucas_kanade": {"b": 2}}
    fresh = score_dataset({name: BASELINES[name] for name in runs}, entries, "first", tmp_path / "fresh", runs,
                          progress=False)
    stopping = {"zero_motion": counting("zero_motion"), "lucas_kanade": counting("lucas_kanade", stop_on_call=4)}
    with pytest.raises(KeyboardInterrupt):  # stopped on the second video's second tracker: its first one is kept
        score_dataset(stopping, entries, "first", tmp_path / "partial", runs, progress=False)
    calls.clear()
    resumed = score_dataset({name: counting(name) for name in runs}, entries, "first", tmp_path / "partial", runs,
                            progress=False)
    assert calls == ["lucas_kanade", "zero_motion", "lucas_kanade"]  # only the unfinished (tracker, video) pairs
    for (name, num, scores), (name_f, num_f, scores_f) in zip(resumed, fresh):
        assert (name, num) == (name_f, num_f)
        for tracker in runs:
            a, b = scores[tracker], scores_f[tracker]
            assert json.dumps(a.metrics) == json.dumps(b.metrics)
            assert all(np.array_equal(x, y) for x, y in ((a.tracks, b.tracks), (a.occluded, b.occluded),
                                                         (a.queries.query_points, b.queries.query_points),
                                                         (a.queries.track_index, b.queries.track_index)))
    with pytest.raises(UserError, match="holds results of another run"):
        score_dataset(BASELINES, entries, "first", tmp_path / "partial", {name: {"c": 3} for name in BASELINES},
                      progress=False)


# ----- seed ranges -----------------------------------------------------------------------------

def test_the_seed_ranges_are_ordered_and_training_stays_above_every_evaluation():
    starts = [seeds.PROMPT_SEED_START, seeds.PROBE_EVAL_SEED_START, seeds.HELD_OUT_SEED_START,
              seeds.CALIBRATION_SEED_START, seeds.TRAINING_SEED_START]
    assert starts == sorted(set(starts)) and starts[-1] == 1_000_000
