"""Scoring a tracker against ground truth: one video, or a dataset of them.

A tracker is anything with the tracker call signature ``tracker(video uint8 (T, H, W, 3), queries (N, 3) as
(t, x, y) pixels) -> (tracks (T, N, 2), visible (T, N))``: difftrack's trackers, the paper's, the baselines of
:mod:`difftrack.baselines`, or :func:`recorded` predictions. :func:`score_tracker` runs it on each video's
queries (the video's own, or sampled per protocol, :mod:`difftrack.evaluation.protocols`) and scores the
predictions with tapnet's metrics (:mod:`difftrack.evaluation.metrics`) in the protocol's query mode, in the
video's own pixels or scaled to ``score_size`` x ``score_size`` (TAP-Vid's 256). With ``moved_distance`` it
also scores the moved points (:func:`difftrack.evaluation.queries.moved_points`).

:func:`score_dataset` scores several trackers on a TAP-Vid dataset at the protocol's size, sharded over
torchrun ranks and resumable (:mod:`difftrack.evaluation.store`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from difftrack.distributed import gather_on_rank_zero, rank_and_world
from difftrack.evaluation.metrics import METRIC_NAMES, average_over_videos, compute_tapvid_metrics
from difftrack.evaluation.protocols import Queries, given_queries, metric_mode, sample_queries, to_protocol
from difftrack.evaluation.queries import moved_points
from difftrack.evaluation.store import ResultStore, my_share

Tracker = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class LabelledVideo:
    """A video and the true tracks of its points, in its own pixels."""

    frames: np.ndarray  # uint8 (T, H, W, 3): what the tracker sees
    points: np.ndarray  # (N, T, 2) raster (x, y): each track's true position
    occluded: np.ndarray  # bool (N, T)
    queries: np.ndarray | None = None  # (N, 3) (t, x, y), one per track; None: the protocol samples them
    name: str = ""

    def protocol_queries(self, protocol: str) -> Queries:
        if self.queries is None:
            return sample_queries(self.points, self.occluded, protocol)
        return given_queries(self.queries, self.points, self.occluded)


@dataclass
class VideoScore:
    """A tracker's predictions on one video's queries and their scores."""

    name: str
    queries: Queries
    tracks: np.ndarray  # float32 (Q, T, 2) predicted, per query, in the video's pixels
    occluded: np.ndarray  # bool (Q, T) predicted
    metrics: dict[str, float]  # tapnet's metrics
    moved_metrics: dict[str, float] | None = None  # the same over the moved points only
    moved_counts: np.ndarray | None = None  # int64 (2,): (within moved_distance, all) of the moved visible points

    def per_track(self, num_tracks: int) -> tuple[np.ndarray, np.ndarray]:
        """(tracks (N, T, 2), occluded (N, T)) for every track of the video, from each track's first query; a track
        never queried holds zeros and occluded."""
        num_frames = self.occluded.shape[1]
        tracks = np.zeros((num_tracks, num_frames, 2), np.float32)
        occluded = np.ones((num_tracks, num_frames), bool)
        queried, first_query = np.unique(self.queries.track_index, return_index=True)
        tracks[queried] = self.tracks[first_query]
        occluded[queried] = self.occluded[first_query]
        return tracks, occluded

    def median_error(self) -> list[float | None]:
        """Per frame, the median distance (video pixels) of the predictions from the truth over the queries visible
        there in the truth (None where none is)."""
        error = np.linalg.norm(self.tracks - self.queries.target_points, axis=-1)
        visible = ~self.queries.occluded
        return [float(np.median(error[visible[:, t], t])) if visible[:, t].any() else None
                for t in range(error.shape[1])]


@dataclass
class TrackerScore:
    """Scores of one tracker over one or more videos."""

    videos: list[VideoScore]
    metrics: dict[str, float]  # tapnet's metrics, averaged over the videos where each is defined
    moved_metrics: dict[str, float] | None = None  # the same over the moved points
    moved_within: float | None = None  # share of the moved visible (query, frame) pairs within moved_distance


def protocol_video(name: str, sample) -> LabelledVideo:
    """A TAP-Vid video (``video``, ``points`` normalised, ``occluded``, as the TAP-Vid readers load it) at the
    protocol's 256x256, its tracks in raster pixels there."""
    frames, points = to_protocol(sample.video, sample.points)
    return LabelledVideo(frames, points, sample.occluded, name=name)


def recorded(tracks: np.ndarray, visible: np.ndarray) -> Tracker:
    """A tracker that answers with predictions made already (``tracks`` (T, N, 2), ``visible`` (T, N) of the
    queries it will be asked), to score a run after the fact."""
    def tracker(video: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if tracks.shape[:2] != (len(video), len(queries)):
            raise ValueError(f"recorded tracks {tracks.shape} do not fit {len(video)} frames and {len(queries)} "
                             f"queries")
        return tracks, visible
    return tracker


def score_tracker(tracker: Tracker, source: LabelledVideo | Iterable[LabelledVideo], protocol: str,
                  score_size: int | None = None, moved_distance: float | None = None) -> TrackerScore:
    """Run ``tracker`` on the queries of each video of ``source`` (one :class:`LabelledVideo` or several) and score
    it in ``protocol``'s query mode.

    ``score_size``: the metrics compare coordinates scaled to ``score_size`` x ``score_size`` pixels (TAP-Vid
    scores at 256x256 whatever the video's size); None: the video's own pixels. ``moved_distance`` (in the
    pixels the metrics compare): also score the points more than this far from their query (``moved_metrics``)
    and the share of them predicted within this distance (``moved_within``, max-norm as the moved points).
    """
    videos = [source] if isinstance(source, LabelledVideo) else list(source)
    scores = [_score_video(tracker, video, protocol, score_size, moved_distance) for video in videos]
    result = TrackerScore(videos=scores, metrics=average_over_videos([s.metrics for s in scores]))
    if moved_distance is not None:
        result.moved_metrics = average_over_videos([s.moved_metrics for s in scores])
        within, total = np.sum([s.moved_counts for s in scores], axis=0)
        result.moved_within = within / max(total, 1)
    return result


def _score_video(tracker: Tracker, video: LabelledVideo, protocol: str, score_size: int | None,
                 moved_distance: float | None) -> VideoScore:
    queries = video.protocol_queries(protocol)
    num_frames = video.occluded.shape[1]
    if len(queries.query_points):
        tracks, visible = tracker(video.frames, queries.query_points)
        query_tracks = np.asarray(tracks, dtype=np.float32).transpose(1, 0, 2)
        query_occluded = ~np.asarray(visible, dtype=bool).T
    else:
        query_tracks = np.zeros((0, num_frames, 2), np.float32)
        query_occluded = np.zeros((0, num_frames), bool)
    query_points, target, predicted = queries.query_points, queries.target_points, query_tracks
    if score_size is not None:
        height, width = video.frames.shape[1:3]
        scale = np.float32([score_size / width, score_size / height])
        query_points = np.concatenate([query_points[:, :1], query_points[:, 1:] * scale], axis=1)
        target, predicted = target * scale, predicted * scale
    mode = metric_mode(protocol)
    score = VideoScore(name=video.name, queries=queries, tracks=query_tracks, occluded=query_occluded,
                       metrics=compute_tapvid_metrics(query_points, queries.occluded, target, query_occluded,
                                                      predicted, mode))
    if moved_distance is not None:
        moved = moved_points(target, query_points[:, 1:], moved_distance)
        score.moved_metrics = compute_tapvid_metrics(query_points, queries.occluded | ~moved, target, query_occluded,
                                                     predicted, mode)
        moved_visible = moved & ~queries.occluded
        within = np.abs(predicted - target).max(-1) <= moved_distance
        score.moved_counts = np.array([(within & moved_visible).sum(), moved_visible.sum()], np.int64)
    return score


def _stored(score: VideoScore) -> dict[str, np.ndarray]:
    """A VideoScore as plain arrays, its metrics as one float64 array in METRIC_NAMES order (exact, NaN kept)."""
    q = score.queries
    return {"query_points": q.query_points, "track_index": q.track_index, "target_points": q.target_points,
            "target_occluded": q.occluded, "tracks": score.tracks, "occluded": score.occluded,
            "metrics": np.array([score.metrics[m] for m in METRIC_NAMES], np.float64)}


def _restored(name: str, arrays: dict[str, np.ndarray]) -> VideoScore:
    queries = Queries(query_points=arrays["query_points"], track_index=arrays["track_index"],
                      target_points=arrays["target_points"], occluded=arrays["target_occluded"])
    return VideoScore(name=name, queries=queries, tracks=arrays["tracks"], occluded=arrays["occluded"],
                      metrics=dict(zip(METRIC_NAMES, arrays["metrics"].tolist())))


def score_dataset(trackers: dict[str, Tracker], entries: Iterable, protocol: str, partial: str | Path,
                  runs: dict[str, dict], limit: int | None = None, num_videos: int | None = None,
                  progress: bool = True) -> list | None:
    """Score every tracker on every video of a TAP-Vid dataset at the protocol's 256x256.

    ``entries``: ``(name, load)`` pairs in order, ``load()`` returning a TAP-Vid video (``video``, ``points``
    normalised, ``occluded``), as :meth:`difftrack.data.tapvid.TapVidReader.entries` yields them; ``limit``: the
    first videos only; ``num_videos``: how many there are, if known (for the progress bar). Under torchrun each rank scores the videos with index % world == rank. Each finished
    (tracker, video) goes to ``partial/<tracker>/`` at once (``runs[tracker]`` describes what decides its results:
    a folder of another run is refused), so that a rerun scores only what is missing.

    Returns, on rank 0, ``[(name, num_tracks, {tracker: VideoScore})]`` for every video in dataset order, and None
    on the other ranks.
    """
    stores = {name: ResultStore(Path(partial) / name, runs[name]) for name in trackers}
    for store in stores.values():
        store.check()
    rank, world = rank_and_world()
    total = num_videos if limit is None else min(limit, num_videos or limit)
    local = []
    for index, (name, load) in tqdm(my_share(itertools.islice(entries, limit), rank, world),
                                    total=None if total is None else len(range(rank, total, world)),
                                    disable=not progress or rank != 0, desc=f"videos ({protocol})", unit="video"):
        key = f"{index:06d}"
        records = {tracker: store.load(key) for tracker, store in stores.items()}
        finished = {tracker: record for tracker, record in records.items() if record and record["name"] == name}
        results = {tracker: _restored(name, stores[tracker].arrays(key)) for tracker in finished}
        num_tracks = next((record["num_tracks"] for record in finished.values()), None)
        missing = [tracker for tracker in trackers if tracker not in finished]
        if missing:
            labelled = protocol_video(name, load())
            num_tracks = len(labelled.occluded)
            for tracker in missing:
                results[tracker] = score_tracker(trackers[tracker], labelled, protocol).videos[0]
                stores[tracker].save(key, {"name": name, "num_tracks": num_tracks}, _stored(results[tracker]))
        local.append((index, name, num_tracks, {tracker: results[tracker] for tracker in trackers}))
    gathered = gather_on_rank_zero(local, world)
    if rank != 0:
        return None
    return [(name, num_tracks, results) for _, name, num_tracks, results in sorted(gathered, key=lambda v: v[0])]
