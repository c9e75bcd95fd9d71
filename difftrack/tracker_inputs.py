"""The one check of a tracker's inputs, shared by difftrack's trackers, the paper's tracker and the baselines: RGB
frames and (t, x, y) queries on existing frames, inside them."""

from __future__ import annotations

import numpy as np

from difftrack.errors import UserError


def check_video_and_queries(video, queries) -> tuple[np.ndarray, np.ndarray]:
    """A tracker's inputs as arrays, refused in one line unless RGB frames (T, H, W, 3) and at least one query
    (t, x, y) on an existing frame and inside it. uint8 frames are taken as they are, float frames in [0, 1]
    scaled to uint8."""
    video = np.asarray(video)
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, 3)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise UserError(f"video must be RGB frames (T, H, W, 3), got shape {video.shape}")
    if np.issubdtype(video.dtype, np.floating) and video.size and 0 <= video.min() and video.max() <= 1:
        video = (video * 255).round().astype(np.uint8)
    elif video.dtype != np.uint8:
        raise UserError(f"video frames must be uint8 in [0, 255] or floats in [0, 1], got {video.dtype} in "
                        f"[{video.min():g}, {video.max():g}]; convert them, e.g. frames.clip(0, 255).astype(np.uint8)")
    if len(queries) == 0:
        raise UserError("no query points given; pass at least one (t, x, y) point or use --grid N")
    check_points(queries, *video.shape[:3])
    return video, queries


def check_points(queries: np.ndarray, num_frames: int, height: int, width: int) -> None:
    """Query frames must exist and points must lie inside the frame (pixel edges included)."""
    for i, (t, x, y) in enumerate(queries):
        if not np.isfinite([t, x, y]).all():
            raise UserError(f"point {i} is (t={t:g}, x={x:g}, y={y:g}); a query's frame and place must be finite numbers")
        if t != int(t) or not 0 <= t < num_frames:
            raise UserError(f"point {i} has query frame {t:g}, but the video has frames 0..{num_frames - 1}")
        if not (0 <= x <= width and 0 <= y <= height):
            raise UserError(f"point {i} at (x={x:g}, y={y:g}) lies outside the {width}x{height} frame")
