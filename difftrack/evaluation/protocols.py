"""The TAP-Vid evaluation protocol: frames at 256x256, ground truth in raster pixels, and which queries a
video's tracks give under each query protocol.

Coordinates: (t, x, y) everywhere, x and y in raster pixels with pixel centres at i + 0.5 (tapnet's own
readers emit query points as (t, y, x); nothing here does).

Protocols: tapnet's two query modes, 'first' and 'strided', and the DiffTrack release's, 'release': only
the tracks visible on frame 0, queried there, and scored as 'first' (frames after the query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from difftrack.errors import UserError
from difftrack.evaluation.metrics import QUERY_MODES

PROTOCOL_SIZE = 256
QUERY_STRIDE = 5
PROTOCOLS = QUERY_MODES + ("release",)


@dataclass
class Queries:
    """Queries of one video and their ground truth, one row per query (a track can be queried several times)."""

    query_points: np.ndarray  # float32 (Q, 3) as (t, x, y), raster pixels
    track_index: np.ndarray  # int64 (Q,) which track of the video each query belongs to
    target_points: np.ndarray  # float32 (Q, T, 2) raster (x, y)
    occluded: np.ndarray  # bool (Q, T)


def to_protocol(video: np.ndarray, points: np.ndarray, size: int = PROTOCOL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A video at the protocol's size: frames uint8 (T, H, W, 3) resized to ``size`` x ``size`` (area averaging
    when shrinking, bilinear when growing), and ``points`` (N, T, 2), (x, y) normalised to [0, 1], as raster
    pixels there. Returns ``(frames uint8 (T, size, size, 3), points float32 (N, T, 2))``."""
    import cv2

    height, width = video.shape[1:3]
    if (height, width) == (size, size):
        frames = video.copy()
    else:
        shrinking = height * width > size * size
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (size, size), interpolation=interpolation) for f in video])
    return frames, (points * np.float32(size)).astype(np.float32)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown query mode {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def metric_mode(protocol: str) -> str:
    """The query mode tapnet's metrics score a protocol's queries with."""
    return "first" if check_protocol(protocol) == "release" else protocol


def sample_queries(points: np.ndarray, occluded: np.ndarray, protocol: str, stride: int = QUERY_STRIDE) -> Queries:
    """Query points and their ground truth for one video.

    ``points`` (N, T, 2) raster (x, y), ``occluded`` (N, T). 'first': each track queried at its first
    visible frame, never-visible tracks dropped, in track order. 'strided': at frames 0, stride,
    2 * stride, ... every track visible there becomes a query, ordered by frame then track (tapnet's order).
    'release': the tracks visible on frame 0, queried there, in track order.
    """
    check_protocol(protocol)
    points = np.asarray(points, dtype=np.float32)
    occluded = np.asarray(occluded, dtype=bool)
    visible = ~occluded
    if protocol == "release":
        tracks = np.flatnonzero(visible[:, 0])
        frames = np.zeros(len(tracks), np.int64)
    elif protocol == "first":
        tracks = np.flatnonzero(visible.any(axis=1))
        frames = visible[tracks].argmax(axis=1)
    else:
        frame_track = [(t, n) for t in range(0, occluded.shape[1], stride) for n in np.flatnonzero(visible[:, t])]
        frames = np.array([t for t, _ in frame_track], dtype=np.int64)
        tracks = np.array([n for _, n in frame_track], dtype=np.int64)
    xy = points[tracks, frames] if len(tracks) else np.zeros((0, 2), np.float32)
    query_points = np.concatenate([frames[:, None].astype(np.float32), xy], axis=1).astype(np.float32)
    return Queries(query_points=query_points.reshape(-1, 3), track_index=tracks.astype(np.int64),
                   target_points=points[tracks], occluded=occluded[tracks])


def given_queries(query_points: np.ndarray, points: np.ndarray, occluded: np.ndarray) -> Queries:
    """Queries a video comes with, one per track (as `difftrack track --gt` and the probe take them), with their
    ground truth: ``query_points`` (N, 3) (t, x, y), ``points`` (N, T, 2) raster (x, y), ``occluded`` (N, T)."""
    query_points = np.asarray(query_points)
    return Queries(query_points=query_points, track_index=np.arange(len(query_points), dtype=np.int64),
                   target_points=np.asarray(points), occluded=np.asarray(occluded, dtype=bool))
