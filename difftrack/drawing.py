"""Drawing shared by every renderer: the track overlay (CoTracker-style trails), the probe's label and
keypoint overlay, the probe pictures and the analysis report's matplotlib figures.

Frames are uint8 RGB (T, H, W, 3); small frames are upscaled with nearest-neighbour so that tokens stay
visible as blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftrack.io import atomic_path


def upscale(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (T, h, w[, 3]) frames to (T, H, W[, 3]), ``size`` = (H, W)."""
    import cv2

    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for f in frames])


def readable_scale(height: int, width: int, target: int = 384) -> int:
    """The integer upscale that brings the longer side to about ``target`` pixels."""
    return max(1, int(np.ceil(target / max(height, width))))


def label_colours(ids: np.ndarray, k: int = 10) -> np.ndarray:
    """uint8 RGB of integer labels in [0, k) from matplotlib's qualitative palettes (tab10, tab20)."""
    import matplotlib

    palette = (np.asarray(matplotlib.colormaps["tab10" if k <= 10 else "tab20"].colors)[:k] * 255).astype(np.uint8)
    return palette[ids]


def rainbow_colours(values: np.ndarray) -> np.ndarray:
    """One uint8 RGB colour per value, along gist_rainbow from the smallest to the largest value."""
    import matplotlib

    cmap = matplotlib.colormaps["gist_rainbow"]
    order = (values - values.min()) / max(float(np.ptp(values)), 1e-6) if len(values) > 1 else np.zeros(1)
    return (np.asarray([cmap(float(v))[:3] for v in order]) * 255).astype(np.uint8)


def draw_tracks(video: np.ndarray, tracks: np.ndarray, visible: np.ndarray, queries: np.ndarray,
                trail: int = 8, scale: int | None = None) -> np.ndarray:
    """Point tracks over a video, in the spirit of CoTracker's visualiser: trails of the last ``trail``
    frames, filled dots where visible, rings where predicted occluded; colours by the query's height in
    the frame so neighbours look alike. tracks (T, N, 2) pixels, visible (T, N), queries (N, 3) (t, x, y)."""
    import cv2

    num_frames, height, width = video.shape[:3]
    scale = readable_scale(height, width) if scale is None else scale
    colours = rainbow_colours(queries[:, 2])
    radius = max(2, scale + 1)
    frames = np.ascontiguousarray(upscale(video, (height * scale, width * scale)))
    for t, frame in enumerate(frames):
        for n in range(tracks.shape[1]):
            if t < queries[n, 0]:
                segment = range(t, min(int(queries[n, 0]), t + trail) + 1)
            else:
                segment = range(max(int(queries[n, 0]), t - trail), t + 1)
            colour = tuple(int(c) for c in colours[n])
            pts = [tuple(int(v) for v in tracks[s, n] * scale) for s in segment]
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(frame, a, b, colour, max(1, scale // 2), cv2.LINE_AA)
            centre = tuple(int(v) for v in tracks[t, n] * scale)
            cv2.circle(frame, centre, radius, colour, -1 if visible[t, n] else max(1, scale // 2), cv2.LINE_AA)
    return frames


def draw_labels_and_points(video: np.ndarray, ids: np.ndarray | None, keypoints: np.ndarray | None,
                           scale: int) -> np.ndarray:
    """Instance labels (T, h, w) blended over the frames (0 = background) and keypoints (T, K, 2) pixels as dots."""
    import cv2

    h, w = video.shape[1:3]
    frames = upscale(video, (h * scale, w * scale))
    if ids is not None:
        big = upscale(ids.astype(np.uint8), (h * scale, w * scale))
        colours = label_colours(np.maximum(big.astype(np.int64) - 1, 0) % 10)
        frames = np.where(big[..., None] > 0, (0.5 * frames + 0.5 * colours).astype(np.uint8), frames)
    if keypoints is not None:
        frames = np.ascontiguousarray(frames)
        cols = label_colours(np.arange(keypoints.shape[1]) % 10)
        for t in range(len(frames)):
            for k, (x, y) in enumerate(keypoints[t]):
                cv2.circle(frames[t], (int(x * scale), int(y * scale)), max(2, scale), tuple(int(c) for c in cols[k]),
                           -1, cv2.LINE_AA)
    return frames


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only ever written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` as PNG through a temporary name and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    pyplot().close(fig)
