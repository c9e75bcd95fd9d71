"""Sets of generator clips with their ground truth, as evaluations take them.

- :func:`tapvid_fixture`: clips in TAP-Vid's DAVIS layout (what the TAP-Vid readers read), written as TAP-Vid's
  pickle by :func:`save_tapvid`;
- :func:`make_clips`: the clips model-level matching is scored on (:mod:`difftrack.evaluation.matching`), as
  arrays, made from seeds or read from a frozen file (:func:`load_clips`) so that a change of the generator
  cannot change what a model is scored on (``benchmarks/data/acceptance_clips.npz`` is one).

A set for matching is a dict of stacked arrays: ``seeds`` (C,), ``video`` uint8 (C, T, H, W, 3), ``query_index`` (C, N),
``true_tok`` (C, N, T, 2), ``visible`` (C, N, T), ``moved`` (C, N, T) (see
:func:`difftrack.evaluation.matching.clip_targets`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from tqdm import tqdm

from difftrack.data.synthetic import generate_clip, to_tapvid
from difftrack.evaluation.matching import clip_targets
from difftrack.io import atomic_path

FIELDS = ("seeds", "video", "query_index", "true_tok", "visible", "moved")


def tapvid_fixture(num_videos: int, seed_offset: int = 0, frames: int = 8, size: int = 64, points: int = 16) -> dict:
    """A TAP-Vid DAVIS-style dict, name -> {'video', 'points', 'occluded'}: clip ``seed_offset + i`` as
    ``synthetic_<seed>`` (``frames`` frames of ``size`` x ``size``), its ``points`` tracks drawn with the same seed."""
    videos = {}
    for seed in tqdm(range(seed_offset, seed_offset + num_videos), desc="rendering", unit="video"):
        clip = generate_clip(seed, num_frames=frames, height=size, width=size)
        videos[f"synthetic_{seed:06d}"] = to_tapvid(clip, points, seed)
    return videos


def save_tapvid(path: str | Path, videos: dict) -> None:
    """Write ``videos`` (name -> {'video', 'points', 'occluded'}) as a TAP-Vid DAVIS-style pickle, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(videos, protocol=pickle.HIGHEST_PROTOCOL))


def make_clips(seeds: list[int], frames: int, size: tuple[int, int], patch: int, aperiodic: bool = False) -> dict:
    """The clips of ``seeds`` (``frames`` frames of ``size`` (height, width)) and their ground truth on a grid of
    ``patch``-pixel tokens."""
    grid = size[1] // patch
    out = {name: [] for name in FIELDS}
    for seed in seeds:
        clip = generate_clip(seed, num_frames=frames, height=size[0], width=size[1], aperiodic=aperiodic)
        query_index, true_tok, visible, moved = clip_targets(clip, grid, size[1] / grid)
        for name, value in zip(FIELDS, (seed, clip.video, query_index, true_tok, visible, moved)):
            out[name].append(value)
    return {name: np.stack(values) for name, values in out.items()}


def save_clips(path: str | Path, clips: dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **clips)


def load_clips(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
