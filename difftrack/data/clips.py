"""Sets of generator clips with their ground truth, as evaluations take them.

- :func:`tapvid_fixture`: clips in TAP-Vid's DAVIS layout (what the TAP-Vid readers read), written as TAP-Vid's
  pickle by :func:`save_tapvid`;
- :func:`make_clips`: the clips model-level matching is scored on (:mod:`difftrack.evaluation.matching`), as
  arrays, made from seeds or read from a frozen file (:func:`load_clips`) so that a change of the generator
  cannot change what a model is scored on (``benchmarks/data/acceptance_clips.npz`` is one);
- :func:`tracked_clips`: such a set from clips with tracked points in TAP-Vid's layout (the frozen photo clips).

A set for matching is a dict of stacked arrays: ``seeds`` (C,) (each clip's noise is drawn from its seed),
``video`` uint8 (C, T, H, W, 3), ``query_index`` (C, N), ``true_tok`` (C, N, T, 2), ``visible`` (C, N, T), ``moved``
(C, N, T) (see :func:`difftrack.evaluation.matching.clip_targets`), and ``grid``, the tokens a side the targets
are in.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from tqdm import tqdm

from difftrack.data.synthetic import generate_clip, to_tapvid
from difftrack.evaluation.matching import QUERY_STRIDE, clip_targets, tracked_targets
from difftrack.errors import UserError
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
    return {**{name: np.stack(values) for name, values in out.items()}, "grid": np.int64(grid)}


def tracked_clips(videos, seeds, window: int, grid: int) -> dict:
    """A set for matching from clips with tracked points: ``videos``, TAP-Vid entries ('video' uint8 (T, H, W, 3),
    'points' (N, T, 2) (x, y) normalised to [0, 1], 'occluded' (N, T)); ``seeds``, one a clip. Each clip is cut into
    windows of ``window`` frames (a shorter rest is dropped), each window an entry of the set, scored on a ``grid`` x
    ``grid`` token grid from its first frame (:func:`~difftrack.evaluation.matching.tracked_targets`); a clip's
    windows share its seed. Windows hold different numbers of visible points: the set pads each to the most with
    points never visible, which count nowhere."""
    entries = []
    for seed, video in zip(seeds, videos):
        true_tok = np.asarray(video["points"], np.float32) * np.float32(grid)
        visible = ~np.asarray(video["occluded"], bool)
        for start in range(0, len(video["video"]) - window + 1, window):
            frames = slice(start, start + window)
            targets = tracked_targets(true_tok[:, frames], visible[:, frames], grid)
            if len(targets[0]):  # a window without a visible point on its first frame has nothing to score
                entries.append((seed, video["video"][frames], *targets))
    if not entries:
        raise UserError(f"no window of {window} frames shows a tracked point on its first frame")
    points = max(len(entry[2]) for entry in entries)

    def padded(value):
        return np.concatenate([value, np.zeros((points - len(value), *value.shape[1:]), value.dtype)])

    out = {name: np.stack([entry[i] if i < 2 else padded(entry[i]) for entry in entries])
           for i, name in enumerate(FIELDS)}
    return {**out, "grid": np.int64(grid)}


def save_clips(path: str | Path, clips: dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **clips)


def load_clips(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        clips = {name: data[name] for name in data.files}
    # The acceptance set was frozen before sets named their grid; its queries, one on every other token, give it.
    clips.setdefault("grid", np.int64(QUERY_STRIDE * round(np.sqrt(clips["query_index"].shape[1]))))
    return clips
