"""Overlay videos of point tracks with coloured trails, in the spirit of CoTracker's visualiser."""

from __future__ import annotations

import numpy as np


def track_colors(tracks: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """One RGB colour per track, ordered by the query's height in the frame so neighbours look alike."""
    import matplotlib

    cmap = matplotlib.colormaps["gist_rainbow"]
    y = queries[:, 2]
    order = (y - y.min()) / max(float(np.ptp(y)), 1e-6) if len(y) > 1 else np.zeros(1)
    return (np.asarray([cmap(float(v))[:3] for v in order]) * 255).astype(np.uint8)


def draw_tracks(video: np.ndarray, tracks: np.ndarray, visible: np.ndarray, queries: np.ndarray,
                trail: int = 8, scale: int | None = None) -> np.ndarray:
    """Return uint8 frames (T, H', W', 3): trails of the last ``trail`` frames, filled dots where visible,
    rings where predicted occluded. Small videos are upscaled (``scale``) so the overlay stays readable."""
    import cv2

    num_frames, height, width = video.shape[:3]
    if scale is None:
        scale = max(1, int(np.ceil(384 / max(height, width))))
    colors = track_colors(tracks, queries)
    radius = max(2, scale + 1)
    out = []
    for t in range(num_frames):
        frame = cv2.resize(video[t], (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
        frame = np.ascontiguousarray(frame)
        for n in range(tracks.shape[1]):
            if t < queries[n, 0]:
                start = t
                segment = range(t, min(int(queries[n, 0]), t + trail) + 1)
            else:
                start = max(int(queries[n, 0]), t - trail)
                segment = range(start, t + 1)
            color = tuple(int(c) for c in colors[n])
            pts = [tuple(int(v) for v in tracks[s, n] * scale) for s in segment]
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(frame, a, b, color, max(1, scale // 2), cv2.LINE_AA)
            centre = tuple(int(v) for v in tracks[t, n] * scale)
            cv2.circle(frame, centre, radius, color, -1 if visible[t, n] else max(1, scale // 2), cv2.LINE_AA)
        out.append(frame)
    return np.stack(out)
