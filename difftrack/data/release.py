"""The DiffTrack release's generated-video dataset (``dataset/<model>/<fg|bg>/`` in the authors' repository).

Layout of one folder:

- ``prompt.txt``: one prompt per line, video i is line i;
- ``tracks/NNN.npy``: float32 (1, 49, N, 2), x and y in pixels of the 720x480 video, CoTracker's convention
  (pixel centres at integers); points that leave the frame run past its edge;
- ``visibility/NNN.npy``: bool (1, 49, N);
- ``image/NNN.png``: the first frame, for image-to-video models.

N is 400 (a 20x20 grid, object videos "fg") or 100 (10x10, scene videos "bg"). The release ships no clean
videos: its tracks came from CoTracker on videos it generated. Everything is returned in difftrack's
conventions: tracks (T, N, 2) with pixel centres at i + 0.5, visibility (T, N). The arrays are read with
``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftrack.errors import UserError

RELEASE_SIZE = (480, 720)  # (height, width) the release's tracks are measured at


@dataclass
class ReleaseEntry:
    index: int
    name: str  # NNN, the file stem
    prompt: str
    tracks_path: Path
    visibility_path: Path
    image_path: Path | None


class ReleaseDataset:
    """One ``<fg|bg>`` folder of the release's dataset, checked when opened (missing files, counts)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        prompts = self.root / "prompt.txt"
        if not self.root.is_dir() or not prompts.is_file():
            raise UserError(f"{root} is not a folder of the DiffTrack release's dataset: it needs prompt.txt, "
                            f"tracks/NNN.npy and visibility/NNN.npy (dataset/<model>/<fg|bg>/ in the release)")
        lines = [line.strip() for line in prompts.read_text(encoding="utf-8", errors="replace").splitlines()]
        self.entries = []
        for index, prompt in enumerate(line for line in lines if line):
            name = f"{index:03d}"
            tracks, visibility = self.root / "tracks" / f"{name}.npy", self.root / "visibility" / f"{name}.npy"
            for path in (tracks, visibility):
                if not path.is_file():
                    raise UserError(f"{root}: prompt {index} has no {path.relative_to(self.root)}; the folder must hold "
                                    f"tracks/ and visibility/ for every line of prompt.txt")
            image = self.root / "image" / f"{name}.png"
            self.entries.append(ReleaseEntry(index, name, prompt, tracks, visibility,
                                             image if image.is_file() else None))
        if not self.entries:
            raise UserError(f"{prompts} holds no prompt")

    def __len__(self) -> int:
        return len(self.entries)

    def load_tracks(self, entry: ReleaseEntry, size: tuple[int, int] | None = None):
        """Tracks (T, N, 2) in difftrack's convention and visibility (T, N) of one entry, in pixels of a video of
        ``size`` (height, width) (default: the release's 480x720)."""
        return read_release_tracks(entry.tracks_path, entry.visibility_path, size)


def read_release_tracks(tracks_path, visibility_path, size: tuple[int, int] | None = None):
    """One video's tracks/NNN.npy and visibility/NNN.npy as tracks (T, N, 2) with pixel centres at i + 0.5, in
    pixels of a video of ``size`` (height, width) (default: the release's 480x720), and visibility (T, N)."""
    tracks = _read_array(Path(tracks_path), np.floating)
    visible = _read_array(Path(visibility_path), np.bool_)
    if tracks.ndim != 4 or tracks.shape[0] != 1 or tracks.shape[-1] != 2:
        raise UserError(f"{tracks_path} holds an array of shape {tracks.shape}; the release's tracks are "
                        f"(1, T, N, 2)")
    if visible.shape != tracks.shape[:3]:
        raise UserError(f"{visibility_path} holds shape {visible.shape}, but its tracks are "
                        f"{tracks.shape}; expected (1, T, N)")
    tracks = tracks[0].astype(np.float32) + np.float32(0.5)  # CoTracker's pixel centres are integers
    if size is not None and tuple(size) != RELEASE_SIZE:
        tracks = tracks * np.float32([size[1] / RELEASE_SIZE[1], size[0] / RELEASE_SIZE[0]])
    return tracks, visible[0]


def _read_array(path: Path, kind) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read {path} as a .npy array ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, kind):
        raise UserError(f"{path} holds {getattr(array, 'dtype', type(array).__name__)} values; expected "
                        f"{'floats' if kind is np.floating else 'booleans'}")
    return array
