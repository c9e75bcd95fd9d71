"""TAP-Vid readers (DAVIS, RGB-Stacking, Kinetics): the videos and their tracks as stored.

The pickles store ``points`` as (x, y) normalised to [0, 1]; :mod:`difftrack.evaluation.protocols` brings
a video to the evaluation protocol's 256x256 raster pixels and samples its queries.

Pickles are untrusted input: they are read by ``restricted_load``, which only rebuilds numpy arrays,
numpy scalars, dtypes and builtin containers and refuses every other global before anything runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from difftrack.errors import UserError

DATASETS = ("davis", "kinetics", "rgb_stacking")

DAVIS_FILE = "tapvid_davis.pkl"
RGB_STACKING_FILE = "tapvid_rgb_stacking.pkl"
KINETICS_SHARD_GLOB = "*_of_0010.pkl"

# Everything a TAP-Vid pickle needs, under both numpy 1.x (numpy.core) and 2.x (numpy._core) module
# names; set/frozenset/bytearray and _codecs.encode are how builtin containers and bytes are
# spelled by pickle protocols below 3 and 4.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
    ("_codecs", "encode"),
})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UserError(f"refusing to load {self._source}: it references {module}.{name}, but a TAP-Vid "
                            f"pickle may only hold numpy arrays, numpy scalars and builtin containers")
        return super().find_class(module, name)


def restricted_load(path: str | os.PathLike):
    """Unpickle ``path`` allowing only numpy arrays / scalars / dtypes and builtin containers."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _NumpyOnlyUnpickler(fh, str(path)).load()
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not a TAP-Vid pickle
        raise UserError(f"{path} is not a readable TAP-Vid pickle ({type(exc).__name__}: {exc}); "
                        f"download the dataset files again") from None


@dataclass
class TapVidVideo:
    """One TAP-Vid entry at its stored resolution."""

    name: str
    video: np.ndarray  # uint8 (T, H, W, 3) RGB
    points: np.ndarray  # float32 (N, T, 2) (x, y) normalised to [0, 1]
    occluded: np.ndarray  # bool (N, T)


class TapVidReader:
    """Lists and loads the videos of one TAP-Vid dataset in sorted order.

    ``root`` is the directory holding the dataset's files or, for DAVIS and RGB-Stacking, the pickle
    itself. DAVIS videos are named by their key, RGB-Stacking videos by their zero-padded index,
    Kinetics videos by ``<shard>_<index in shard>`` (e.g. ``0003_of_0010_0012``); shards are read in
    sorted order, one at a time.
    """

    def __init__(self, dataset: str, root: str | os.PathLike):
        if dataset not in DATASETS:
            raise UserError(f"unknown TAP-Vid dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        self.dataset = dataset
        root = Path(root)
        if not root.exists():
            raise UserError(f"TAP-Vid root {root} does not exist; pass the {dataset} directory or its pickle")
        self._entries: dict | list | None = None
        self._shards: list[Path] = []
        if dataset == "kinetics":
            shards = sorted(root.glob(KINETICS_SHARD_GLOB)) if root.is_dir() else []
            if not shards:
                raise UserError(f"{root} holds no Kinetics shards ({KINETICS_SHARD_GLOB}); pass the "
                                f"tapvid_kinetics directory made by tapnet's generate_tapvid.py")
            self._shards = shards
            self.source = root.resolve()
            return
        expected = DAVIS_FILE if dataset == "davis" else RGB_STACKING_FILE
        path = root / expected if root.is_dir() else root
        if not path.is_file():
            raise UserError(f"{root} has no {expected}; pass the directory holding it or the pickle itself")
        entries = restricted_load(path)
        want = dict if dataset == "davis" else list
        if not isinstance(entries, want):
            raise UserError(f"{path} holds a {type(entries).__name__}, but a TAP-Vid {dataset} pickle holds a "
                            f"{want.__name__} of videos")
        self.source = path.resolve()
        self._entries = entries

    @property
    def num_videos(self) -> int | None:
        """Number of videos, or None for Kinetics (known only after reading every shard)."""
        return None if self._entries is None else len(self._entries)

    def entries(self) -> Iterator[tuple[str, TapVidEntry]]:
        """Yield ``(name, entry)`` in sorted order; ``entry()`` decodes that video only when called, and
        ``entry.check()`` validates it without decoding."""
        if isinstance(self._entries, dict):
            for name in sorted(self._entries):
                yield name, TapVidEntry(self._entries[name], str(name), self.source)
        elif isinstance(self._entries, list):
            width = max(4, len(str(len(self._entries) - 1)))
            for i, entry in enumerate(self._entries):
                name = f"{i:0{width}d}"
                yield name, TapVidEntry(entry, name, self.source)
        else:
            for shard in self._shards:
                entries = restricted_load(shard)
                if not isinstance(entries, list):
                    raise UserError(f"{shard} holds a {type(entries).__name__}, but a Kinetics shard holds a "
                                    f"list of videos")
                for i, entry in enumerate(entries):
                    name = f"{shard.stem}_{i:04d}"
                    yield name, TapVidEntry(entry, name, shard)
                del entries

    def checked_names(self, limit: int | None = None) -> list[str]:
        """The names of the first ``limit`` videos (all by default), each entry's structure checked without decoding
        a frame: what a command runs before it loads a model, so that a malformed entry stops it first."""
        names = []
        for name, entry in self.entries():
            if len(names) == limit:
                break
            entry.check()
            names.append(name)
        return names

    def load(self, name: str) -> TapVidVideo:
        for entry_name, entry in self.entries():
            if entry_name == name:
                return entry()
        raise UserError(f"{self.dataset} has no video named {name!r}")


class TapVidEntry:
    """One stored entry: ``check()`` validates its structure without decoding a frame, calling it decodes it."""

    def __init__(self, raw, name: str, source: Path):
        self.raw, self.name, self.source = raw, name, source

    def check(self) -> None:
        raw, name, source = self.raw, self.name, self.source
        if not isinstance(raw, dict) or not {"video", "points", "occluded"} <= set(raw):
            raise UserError(f"video {name} in {source} is not a TAP-Vid entry (a dict with 'video', 'points' and "
                            f"'occluded')")
        video = raw["video"]
        if _encoded(video):
            if not all(isinstance(frame, ENCODED_FRAME_TYPES) for frame in video):
                raise UserError(f"video {name} in {source} holds frames that are not JPEG bytes; expected uint8 "
                                f"(T, H, W, 3) or a list of JPEG-encoded frames")
        elif not isinstance(video, np.ndarray) or video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            what = f"{video.dtype} {video.shape}" if isinstance(video, np.ndarray) else f"of type {type(video).__name__}"
            raise UserError(f"video {name} in {source} has frames {what}; expected uint8 (T, H, W, 3) or a list of "
                            f"JPEG-encoded frames")
        num_frames = len(video)
        points_shape, occluded_shape = np.shape(raw["points"]), np.shape(raw["occluded"])
        if len(points_shape) != 3 or points_shape[1:] != (num_frames, 2) or occluded_shape != points_shape[:2]:
            raise UserError(f"video {name} in {source} has points {points_shape} and occluded {occluded_shape}; "
                            f"expected (N, {num_frames}, 2) and (N, {num_frames})")

    def __call__(self) -> TapVidVideo:
        self.check()
        video = self.raw["video"]
        if _encoded(video):
            frames = [_decode_jpeg(frame, self.name, self.source) for frame in video]
            if len({frame.shape for frame in frames}) > 1:
                raise UserError(f"video {self.name} in {self.source} holds frames of different sizes")
            video = np.stack(frames)
        points = np.asarray(self.raw["points"], dtype=np.float32)
        return TapVidVideo(self.name, video, points, np.asarray(self.raw["occluded"]).astype(bool))


# The Kinetics shards store each frame JPEG-encoded (bytes, or a uint8 buffer of them).
ENCODED_FRAME_TYPES = (bytes, bytearray, memoryview, np.ndarray)


def _encoded(video) -> bool:
    return isinstance(video, (list, tuple)) or (isinstance(video, np.ndarray) and video.dtype == object)


def _decode_jpeg(data, name: str, source: Path) -> np.ndarray:
    import cv2

    frame = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise UserError(f"video {name} in {source} holds a frame that is not a decodable JPEG")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
