"""Temporal consistency of a generated video, and a per-frame quality guard.

Consistency:
- ``warp_error``: each frame warped onto the next with OpenCV Farneback optical flow (flow from
  frame t + 1 back to frame t, so every pixel of t + 1 samples frame t); mean absolute photometric
  error in [0, 1]. Also returns the mean flow magnitude (pixels per frame).
- ``track_acceleration``: Lucas-Kanade tracks of a grid of points on frame 0, chained frame to
  frame; mean norm of the second difference of positions (pixels per frame^2) over the tracks
  that survive the whole video.

Both reward a frozen or washed-out video, so they come with a guard:
- ``sharpness``: mean Laplacian variance of the grey frames (blur lowers it);
- ``frame_difference``: mean absolute difference between two videos' frames in [0, 1] (against the
  no-guidance video: how far guidance moved the result), or between consecutive frames of one
  video (zero for a frozen video).

Videos are uint8 RGB arrays (T, H, W, 3).
"""

from __future__ import annotations

import numpy as np


def _grey(video: np.ndarray) -> np.ndarray:
    import cv2

    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB video (T, H, W, 3), got {video.dtype} {video.shape}")
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video])


def _farneback(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) such that prev(x + flow(x)) ~ nxt(x); window scaled to the frame size."""
    import cv2

    win = max(5, min(prev.shape) // 8) | 1
    return cv2.calcOpticalFlowFarneback(nxt, prev, None, pyr_scale=0.5, levels=3, winsize=win, iterations=5,
                                        poly_n=5, poly_sigma=1.1, flags=0)


def warp_error(video: np.ndarray) -> dict:
    """Mean photometric error after warping frame t onto frame t + 1, and the mean flow magnitude."""
    import cv2

    grey = _grey(video)
    colour = np.asarray(video, dtype=np.float32) / 255.0
    h, w = grey.shape[1:]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    errors, motion = [], []
    for t in range(len(grey) - 1):
        flow = _farneback(grey[t], grey[t + 1])
        warped = cv2.remap(colour[t], xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        errors.append(float(np.abs(warped - colour[t + 1]).mean()))
        motion.append(float(np.linalg.norm(flow, axis=-1).mean()))
    if not errors:
        return {"warp_error": float("nan"), "flow_magnitude": float("nan")}
    return {"warp_error": float(np.mean(errors)), "flow_magnitude": float(np.mean(motion))}


def track_acceleration(video: np.ndarray, grid: int = 8) -> dict:
    """Mean acceleration of Lucas-Kanade tracks started on a ``grid`` x ``grid`` lattice of frame 0."""
    import cv2

    grey = _grey(video)
    t, h, w = grey.shape
    ys, xs = np.meshgrid((np.arange(grid) + 0.5) * h / grid, (np.arange(grid) + 0.5) * w / grid, indexing="ij")
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32).reshape(-1, 1, 2)
    alive = np.ones(len(points), dtype=bool)
    path = [points[:, 0].copy()]
    win = max(5, min(h, w) // 8) | 1
    for i in range(t - 1):
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(grey[i], grey[i + 1], points, None, winSize=(win, win),
                                                  maxLevel=2,
                                                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        inside = (nxt[:, 0, 0] >= 0) & (nxt[:, 0, 0] <= w) & (nxt[:, 0, 1] >= 0) & (nxt[:, 0, 1] <= h)
        alive &= status[:, 0].astype(bool) & inside
        points = nxt
        path.append(points[:, 0].copy())
    tracks = np.stack(path)[:, alive]  # (T, N_alive, 2)
    if t < 3 or tracks.shape[1] == 0:
        return {"acceleration": float("nan"), "tracked_fraction": float(alive.mean())}
    accel = tracks[2:] - 2 * tracks[1:-1] + tracks[:-2]
    return {"acceleration": float(np.linalg.norm(accel, axis=-1).mean()), "tracked_fraction": float(alive.mean())}


def sharpness(video: np.ndarray) -> float:
    """Mean over frames of the variance of the Laplacian of the grey frame (grey levels 0..255)."""
    import cv2

    return float(np.mean([cv2.Laplacian(frame.astype(np.float64), cv2.CV_64F).var() for frame in _grey(video)]))


def frame_difference(video: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Mean absolute difference in [0, 1] to ``reference`` frame by frame, or between consecutive frames."""
    a = np.asarray(video, dtype=np.float32) / 255.0
    if reference is None:
        return float(np.abs(a[1:] - a[:-1]).mean()) if len(a) > 1 else float("nan")
    b = np.asarray(reference, dtype=np.float32) / 255.0
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def temporal_metrics(video: np.ndarray, reference: np.ndarray | None = None, grid: int = 8) -> dict:
    """Every measure above for one video; ``reference`` (the no-guidance video) adds ``difference_to_reference``."""
    out = {**warp_error(video), **track_acceleration(video, grid), "sharpness": sharpness(video),
           "frame_change": frame_difference(video)}
    if reference is not None:
        out["difference_to_reference"] = frame_difference(video, reference)
        out["sharpness_ratio_to_reference"] = out["sharpness"] / max(sharpness(reference), 1e-12)
    return out
