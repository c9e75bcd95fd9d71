"""Fused matching kernel: per-frame correspondences and joint-attention scores without dense cost maps.

See docs/ARCHITECTURE.md ("Kernel interface") and docs/method.md sections 2-3 for the definitions.
"""

from __future__ import annotations

import math

import torch

from difftrack.errors import UserError
from difftrack.kernels.common import MatchResult

__all__ = ["MatchResult", "match", "triton_available"]

BACKENDS = ("auto", "torch", "triton", "reference")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _grid_shape(grid) -> tuple[int, int]:
    if hasattr(grid, "grid_h") and hasattr(grid, "grid_w"):
        return int(grid.grid_h), int(grid.grid_w)
    try:
        grid_h, grid_w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise UserError(f"grid must be (grid_h, grid_w) or a TokenGeometry, not {grid!r}") from None
    return grid_h, grid_w


def _check_inputs(query, key, grid_h, grid_w, source_frame, text_key, window, reverse):
    if query.dim() != 3 or key.dim() != 3:
        raise UserError(f"query and key must be (heads, tokens, dim), got {tuple(query.shape)} and {tuple(key.shape)}")
    heads, _, dim = query.shape
    if key.shape[0] != heads or key.shape[2] != dim:
        raise UserError(f"key {tuple(key.shape)} does not match query {tuple(query.shape)} in heads or head dim")
    tokens = grid_h * grid_w
    if grid_h < 1 or grid_w < 1 or key.shape[1] == 0 or key.shape[1] % tokens:
        raise UserError(f"key holds {key.shape[1]} tokens, not a whole number of {grid_h}x{grid_w} frames; "
                        "pass the grid of the captured latents")
    frames = key.shape[1] // tokens
    if not 0 <= source_frame < frames:
        raise UserError(f"source_frame {source_frame} is out of range; valid frames are 0..{frames - 1}")
    if text_key is not None and (text_key.dim() != 3 or text_key.shape[0] != heads or text_key.shape[2] != dim):
        raise UserError(f"text_key must be (heads={heads}, text tokens, dim={dim}), got {tuple(text_key.shape)}")
    if not isinstance(window, int) or window < 0:
        raise UserError(f"window must be a non-negative integer, not {window!r}")
    if reverse is not None:
        all_queries, source_index = reverse
        if tuple(all_queries.shape) != tuple(key.shape):
            raise UserError(f"reverse queries must be shaped like key {tuple(key.shape)}, got {tuple(all_queries.shape)}")
        if source_index.shape != (query.shape[1],):
            raise UserError(f"reverse source_index must hold one in-frame token index per query point "
                            f"({query.shape[1]}), got shape {tuple(source_index.shape)}")
        if len(source_index) and not (0 <= int(source_index.min()) and int(source_index.max()) < tokens):
            raise UserError(f"reverse source_index values must lie in 0..{tokens - 1}")


def match(query: torch.Tensor, key: torch.Tensor, grid, source_frame: int, text_key: torch.Tensor | None = None,
          scale: float | None = None, window: int = 1, reverse=None, backend: str = "auto",
          candidates: int = 0) -> MatchResult:
    """Match N query points of frame ``source_frame`` against every frame of ``key``.

    query (H, N, D); key (H, F * P, D) frame-major; text_key (H, L, D) or None; grid (grid_h, grid_w)
    or a TokenGeometry; scale defaults to 1 / sqrt(D); reverse = (all_queries (H, F * P, D),
    source_index (N,)) averages in the reverse direction. backend: "auto" (triton for CUDA tensors
    when triton imports, torch otherwise), "torch", "triton" or "reference" (naive dense, tests only).
    candidates=K > 0 also returns the K best tokens of every cost map (``candidate_*``), which the
    temporal decoder of the tracker takes; the Triton kernel keeps no cost map, so these calls run on
    the torch backend (on the same device).
    """
    grid_h, grid_w = _grid_shape(grid)
    _check_inputs(query, key, grid_h, grid_w, source_frame, text_key, window, reverse)
    if backend not in BACKENDS:
        raise UserError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if candidates < 0:
        raise UserError(f"candidates must be >= 0, got {candidates}")
    if backend == "auto":
        backend = "triton" if query.is_cuda and triton_available() and not candidates else "torch"
    if backend == "triton" and candidates:
        backend = "torch"
    args = (query, key, grid_h, grid_w, int(source_frame), text_key, float(scale), window, reverse, int(candidates))
    if backend == "reference":
        from difftrack.kernels.reference import match_reference

        return match_reference(*args)
    if backend == "triton":
        if not triton_available():
            raise UserError("backend='triton' needs the triton package: pip install 'difftrack[triton]'")
        from difftrack.kernels.triton_match import match_triton

        return match_triton(*args[:-1])  # never asked for candidates (see above)
    from difftrack.kernels.torch_chunked import match_torch

    return match_torch(*args)
