"""Files in and out: videos (OpenCV), points JSON, and atomic writes (temporary name, then rename)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from difftrack.errors import UserError

# FFmpeg, inside OpenCV, logs to the terminal itself ("moov atom not found"); a file it cannot read gets
# our one error line instead. Read when OpenCV first opens a video, so it is set on import.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    if not final.parent.exists():
        raise UserError(f"output directory {final.parent} does not exist; create it or choose another --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or "".join(final.suffixes) or ".tmp",
                               dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the user's usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike):
    """Yield a temporary directory next to ``out`` (the directory counterpart of :func:`atomic_path`); move its
    files into ``out`` only if the block succeeds."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=existing))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_safe(obj):
    """``obj`` with numpy scalars and arrays as Python numbers and lists, and NaN / inf as None (JSON null)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return json_safe(obj.item())
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def save_npz(path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


# A folder of frames records no frame rate; DAVIS and TAP-Vid-DAVIS, the usual such folders, were shot at 24.
FRAME_FOLDER_FPS = 24.0
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_video(path: str | os.PathLike, max_frames: int | None = None,
               allow_short: bool = False) -> tuple[np.ndarray, float]:
    """Decode a video file, or a folder of PNG / JPEG frames sorted by name (at FRAME_FOLDER_FPS), to uint8 RGB
    frames (T, H, W, 3) and its frame rate.

    A file that decodes fewer frames than its container declares (damaged, or cut short) is refused, naming
    the first frame that failed, unless ``allow_short``: then its frames up to that one are returned."""
    import cv2

    path = str(path)
    if os.path.isdir(path):
        return _read_frame_folder(path, max_frames), FRAME_FOLDER_FPS
    if not os.path.isfile(path):
        raise UserError(f"video {path} does not exist; pass the path of a readable video file or a folder of frames")
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 8.0
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise UserError(f"could not decode any frame from {path}; is it a video file OpenCV can read (mp4, avi)?")
    expected = declared if max_frames is None else min(declared, max_frames)
    if len(frames) < expected and not allow_short:
        raise UserError(f"{path} declares {declared} frames but frame {len(frames)} (0-based) does not decode: the "
                        f"file is damaged or cut short; re-encode or re-download it, or pass --allow-short-video to "
                        f"use its first {len(frames)} frames")
    return np.stack(frames), float(fps)


def _read_frame_folder(path: str, max_frames: int | None) -> np.ndarray:
    import cv2

    files = sorted(f for f in Path(path).iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file())
    if not files:
        raise UserError(f"folder {path} holds no frames; put the video's frames in it as PNG or JPEG files, "
                        f"named so that they sort in order (00000.jpg, 00001.jpg, ...)")
    frames = []
    for file in files[:max_frames]:
        frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if frame is None:
            raise UserError(f"frame {file} cannot be read as an image; replace it with a valid PNG or JPEG file")
        if frames and frame.shape != frames[0].shape:
            raise UserError(f"frame {file} is {frame.shape[1]}x{frame.shape[0]} but {files[0].name} is "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}; every frame of a folder must have one size")
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    import cv2

    if not Path(path).is_file():
        raise UserError(f"image file {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read {path} as an image; give a PNG or JPEG file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as MP4, atomically."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video wants uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                                 (frames.shape[2], frames.shape[1]))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV could not open an MP4 writer for {path}")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()


def read_label_map(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"mask file {path} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                return data["mask"] if "mask" in data.files else data[data.files[0]]
        from PIL import Image

        with Image.open(p) as img:
            if img.mode not in ("P", "L", "1", "I", "I;16"):
                raise UserError(f"mask {path} is a {img.mode} image; give a palette or greyscale label PNG "
                                f"(pixel value = instance id) or a .npy of ids")
            return np.asarray(img).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read mask {path} ({str(exc).splitlines()[0][:120]}); give a label PNG, .npy or .npz"
                        ) from None


def read_keypoints(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"keypoints file {path} does not exist")
    try:
        data = json.loads(p.read_text())
        rows = [[float(k["x"]), float(k["y"])] if isinstance(k, dict) else [float(k[0]), float(k[1])] for k in data]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"keypoints file {path} must be JSON [[x, y], ...] or [{{\"x\": .., \"y\": ..}}, ...]") from None
    return np.asarray(rows, np.float64).reshape(-1, 2)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text file, one per line; blank lines and lines starting with # are skipped."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file {path} does not exist; pass a text file with one prompt per line")
    try:
        lines = file.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"prompts file {path} is not UTF-8 text; write one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompt; write one prompt per line")
    return prompts


def load_points(path: str | os.PathLike) -> np.ndarray:
    """Read query points (t, x, y) from JSON: a list of {"t", "x", "y"} objects or of [t, x, y] rows."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"points file {path} does not exist")
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"points file {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                        f'expected [{{"t": 0, "x": 12.5, "y": 40.0}}, ...] or [[t, x, y], ...]') from None
    if not isinstance(data, list) or not data:
        raise UserError(f"points file {path} must hold a non-empty JSON list of points")
    rows = []
    for i, p in enumerate(data):
        try:
            t, x, y = (p["t"], p["x"], p["y"]) if isinstance(p, dict) else p
        except (KeyError, TypeError, ValueError):
            t = x = y = None
        # JSON true and "3" are no coordinates (Python would read true as 1), and NaN or Infinity is no place.
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (t, x, y)):
            raise UserError(f"point {i} in {path} is {json.dumps(p)}; each point must be {{\"t\", \"x\", \"y\"}} "
                            f"or [t, x, y] with finite numbers")
        rows.append([float(t), float(x), float(y)])
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which check_points refuses in one line
        return np.asarray(rows, dtype=np.float32)


def load_tracks(path: str | os.PathLike, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Tracks (T, N, 2), visibility (T, N) and queries (N, 3) (None when the file has none) from an npz in
    `difftrack track`'s format, as `difftrack synth` writes its ground truth."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"tracks file {path} does not exist; pass the .npz written by `difftrack track` or "
                        f"`difftrack synth`")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array names neither tracks nor visibility
            raise ValueError(f"it holds one bare {data.dtype} array {data.shape}, not named arrays; the DiffTrack "
                             f"release's tracks/NNN.npy and visibility/NNN.npy pairs are read by `analyze "
                             f"--release-dataset DIR`")
        with data:
            tracks, visible = np.asarray(data["tracks"], np.float32), np.asarray(data["visibility"], bool)
            queries = np.asarray(data["queries"], np.float32) if "queries" in data.files else None
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"tracks file {path} is not an .npz with 'tracks' (T, N, 2) and 'visibility' (T, N) as "
                        f"`difftrack track` and `difftrack synth` write it ({str(exc).splitlines()[0][:200]})") from None
    if tracks.ndim != 3 or tracks.shape[2] != 2 or visible.shape != tracks.shape[:2]:
        raise UserError(f"tracks file {path} holds tracks {tracks.shape} and visibility {visible.shape}; "
                        f"expected (T, N, 2) and (T, N)")
    if queries is not None and queries.shape != (tracks.shape[1], 3):
        raise UserError(f"tracks file {path} holds queries {queries.shape}; expected ({tracks.shape[1]}, 3) as "
                        f"(t, x, y), one per track")
    if tracks.shape[0] != num_frames:
        raise UserError(f"tracks file {path} has {tracks.shape[0]} frames but the video has {num_frames}; "
                        f"pass the tracks of this video")
    return tracks, visible, queries
