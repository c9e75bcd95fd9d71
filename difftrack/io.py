"""Files in and out: videos (OpenCV), points JSON, and atomic writes (temporary name, then rename)."""

from __future__ import annotations

import contextlib
import json
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


def format_number(value, spec: str = ".3f", missing: str = "n/a", scale: float = 1.0) -> str:
    """One number in tables and CSVs: ``format(value * scale, spec)``, ``missing`` for None / NaN / inf;
    anything that is not a float passes through as ``str``."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return missing
    if isinstance(value, (float, np.floating)):
        return format(float(value) * scale, spec)
    return str(value)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def save_npz(path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file to uint8 RGB frames (T, H, W, 3) and its frame rate."""
    import cv2

    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"video {path} does not exist; pass the path of a readable video file")
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 8.0
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise UserError(f"could not decode any frame from {path}; is it a video file OpenCV can read (mp4, avi)?")
    return np.stack(frames), float(fps)


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
            if isinstance(p, dict):
                rows.append([float(p["t"]), float(p["x"]), float(p["y"])])
            else:
                t, x, y = p
                rows.append([float(t), float(x), float(y)])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"point {i} in {path} is {p!r}; each point must be {{\"t\", \"x\", \"y\"}} "
                            f"or [t, x, y] with numbers") from None
    return np.asarray(rows, dtype=np.float32)


def load_tracks(path: str | os.PathLike, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Tracks (T, N, 2), visibility (T, N) and queries (N, 3) (None when the file has none) from an npz in
    `difftrack track`'s format, as `difftrack synth` writes its ground truth."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"tracks file {path} does not exist; pass the .npz written by `difftrack track` or "
                        f"`difftrack synth`")
    try:
        with np.load(path, allow_pickle=False) as data:
            tracks, visible = np.asarray(data["tracks"], np.float32), np.asarray(data["visibility"], bool)
            queries = np.asarray(data["queries"], np.float32) if "queries" in data.files else None
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"tracks file {path} is not an npz with 'tracks' (T, N, 2) and 'visibility' (T, N) "
                        f"({str(exc).splitlines()[0][:80]})") from None
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


def check_points(queries: np.ndarray, num_frames: int, height: int, width: int) -> None:
    """Query frames must exist and points must lie inside the frame (pixel edges included)."""
    for i, (t, x, y) in enumerate(queries):
        if t != int(t) or not 0 <= t < num_frames:
            raise UserError(f"point {i} has query frame {t:g}, but the video has frames 0..{num_frames - 1}")
        if not (0 <= x <= width and 0 <= y <= height):
            raise UserError(f"point {i} at (x={x:g}, y={y:g}) lies outside the {width}x{height} frame")
