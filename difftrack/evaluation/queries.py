"""Where evaluations put their query points, and which points count as moved.

- :func:`query_grid`: an n x n grid over a frame, one point at the centre of each of n x n equal cells;
- :func:`token_grid`: the same grid in token units, each point snapped to the centre of the token under it
  (its descriptor is then exactly one token's, no interpolation), duplicates dropped;
- :func:`moved_points`: the points that moved more than a distance from where they were queried, the ones
  predicting "no motion" cannot get right.
"""

from __future__ import annotations

import numpy as np


def query_grid(n: int, height: float, width: float, frame: float = 0) -> np.ndarray:
    """(n * n, 3) float64 queries (t, x, y) on ``frame``: the centres of n x n equal cells over a ``height`` x
    ``width`` frame, row by row."""
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n * height, (np.arange(n) + 0.5) / n * width, indexing="ij")
    return np.stack([np.full(n * n, frame, np.float64), xs.ravel(), ys.ravel()], axis=1)


def token_grid(n: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(N, 2) float64 (x, y) token coordinates: :func:`query_grid` over a ``grid_h`` x ``grid_w`` token grid, each
    point moved to the centre j + 0.5 of its token, distinct tokens only (N = n * n while n fits the grid),
    row by row."""
    snapped = np.floor(query_grid(n, grid_h, grid_w)[:, 1:]) + 0.5
    return np.unique(snapped[:, ::-1], axis=0)[:, ::-1].copy()  # sorted by (y, x): row by row


def moved_points(tracks: np.ndarray, query_xy: np.ndarray, distance: float) -> np.ndarray:
    """bool (N, T): whether point n lies more than ``distance`` from its query position at frame t, in the max-norm
    (Chebyshev: the larger of |dx| and |dy|), so that a point counts as moved once it has left the square of
    ``distance`` around its query, e.g. one token in any direction, diagonals included.

    ``tracks`` (N, T, 2) and ``query_xy`` (N, 2), in one unit (pixels or tokens) with ``distance``.
    """
    return np.abs(tracks - query_xy[:, None]).max(-1) > distance
