"""Token geometry of a video DiT's joint sequence, and the maps between tokens, latent frames and pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenGeometry:
    """Where every token of one forward pass sits.

    Video tokens are laid out frame-major (frame, row, column), as every supported diffusers model
    flattens them. ``stride_px`` is the size of one token in pixels of the *input* video
    (``(y, x)``), so a token (row i, column j) has its centre at ((j + 0.5) * sx, (i + 0.5) * sy).
    ``temporal_compression`` is how many RGB frames one latent frame stands for (1 when each frame
    is encoded as its own latent frame): latent frame f <-> RGB frame f * temporal_compression.
    """

    frames: int
    grid_h: int
    grid_w: int
    text_tokens: int
    text_position: str  # "first", "last" or "separate"
    stride_px: tuple[float, float] = (16.0, 16.0)
    temporal_compression: int = 1
    rgb_frames: int | None = None

    def __post_init__(self):
        if self.text_position not in ("first", "last", "separate"):
            raise ValueError(f"text_position must be first, last or separate, not {self.text_position!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def joint_tokens(self) -> int:
        return self.video_tokens + (0 if self.text_position == "separate" else self.text_tokens)

    @property
    def num_rgb_frames(self) -> int:
        if self.rgb_frames is not None:
            return self.rgb_frames
        return (self.frames - 1) * self.temporal_compression + 1

    def pixel_to_token(self, xy: np.ndarray) -> np.ndarray:
        """Pixel (x, y) -> continuous token coordinates (x, y), token centres at integer + 0.5."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy / np.array([self.stride_px[1], self.stride_px[0]])

    def token_to_pixel(self, txy: np.ndarray) -> np.ndarray:
        txy = np.asarray(txy, dtype=np.float64)
        return txy * np.array([self.stride_px[1], self.stride_px[0]])

    def nearest_token(self, xy: np.ndarray) -> np.ndarray:
        """Pixel (x, y) -> flat in-frame token index of the token that contains the pixel."""
        t = np.floor(self.pixel_to_token(xy)).astype(np.int64)
        col = np.clip(t[..., 0], 0, self.grid_w - 1)
        row = np.clip(t[..., 1], 0, self.grid_h - 1)
        return row * self.grid_w + col

    def latent_to_rgb_frame(self, f):
        """Latent frame index -> the RGB frame it is anchored to (frame 0 alone, then every c-th)."""
        return np.asarray(f) * self.temporal_compression
