"""Option types shared by every command and benchmark: each checks its value when the arguments are
parsed, so that a bad value is one `error:` line (exit 2) before a model loads or a file is written.

Use them as argparse ``type=`` callables::

    p.add_argument("--grid", type=integer(min=1))
    p.add_argument("--lr", type=number(min=0, min_inclusive=False))
    p.add_argument("--out", type=output_file(".mp4"))
    p.add_argument("--run-dir", type=output_dir)
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from difftrack.errors import UserError

MAX_SEED = 2**63 - 1


def _bounds(min, max, min_inclusive=True) -> str:
    def text(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    lower = None if min is None else (f">= {text(min)}" if min_inclusive else f"> {text(min)}")
    upper = None if max is None else f"<= {text(max)}"
    return " and ".join(b for b in (lower, upper) if b)


def _ranged(convert, in_range, wanted: str, name: str):
    """An argparse type: ``convert(text)``, refused unless ``in_range(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not in_range(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def integer(min: int | None = None, max: int | None = None):
    """An int in [min, max] (either bound optional)."""
    wanted = "an integer" + (f" {_bounds(min, max)}" if min is not None or max is not None else "")
    return _ranged(int, lambda v: (min is None or v >= min) and (max is None or v <= max), wanted, "integer")


def number(min: float | None = None, max: float | None = None, min_inclusive: bool = True):
    """A finite float in [min, max] (or (min, max] with ``min_inclusive=False``)."""
    wanted = "a finite number" + (f" {_bounds(min, max, min_inclusive)}" if min is not None or max is not None else "")

    def in_range(v: float) -> bool:
        above = min is None or (v >= min if min_inclusive else v > min)
        return math.isfinite(v) and above and (max is None or v <= max)

    return _ranged(float, in_range, wanted, "number")


seed = integer(min=0, max=MAX_SEED)
positive = integer(min=1)


def writable_directory_problem(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` or in what it would be created under, else None.

    The nearest existing ancestor is probed by creating (and removing) a file in it: permission bits
    say nothing for root or on a read-only mount, a real attempt does.
    """
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".difftrack-write-check-", dir=existing)
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc})"
    os.close(fd)
    os.remove(probe)
    return None


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] = (), prefix: bool = False,
                      new_parent: bool = False) -> Path:
    """An output file (or, with ``prefix``, a file-name prefix or an existing directory to write into) in an
    existing, writable directory, or with ``new_parent`` in one that the caller will create."""
    if prefix and str(path).endswith(("/", os.sep)) and not Path(path).is_dir():
        raise UserError(f"directory {path} does not exist; create it first")
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{path} must end in {' or '.join(suffixes)}")
    if path.is_dir() and not prefix:
        raise UserError(f"{path} is a directory; give a file name inside it")
    if not new_parent and not path.parent.exists():
        raise UserError(f"directory {path.parent} does not exist; create it first")
    problem = writable_directory_problem(path if prefix and path.is_dir() else path.parent)
    if problem:
        raise UserError(problem)
    return path


def prefix_for(out: str | None, source: str | os.PathLike, suffix: str) -> Path:
    """The prefix of a command's output files: ``out`` as given (an --out checked by :data:`output_prefix`),
    ``out/<source stem><suffix>`` when it is an existing directory, ``<source stem><suffix>`` beside ``source``
    without it."""
    name = Path(source).stem + suffix
    if out is None:
        return check_output_file(Path(source).with_name(name), prefix=True)
    return Path(out) / name if Path(out).is_dir() else Path(out)


def check_output_dir(path: str | os.PathLike) -> Path:
    """A directory that exists or can be created, and can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory")
    problem = writable_directory_problem(path)
    if problem:
        raise UserError(problem)
    return path


def _option_type(check, name: str):
    """An argparse ``type=`` callable from a check that raises UserError; the value stays the text given."""

    def parse(text: str) -> str:
        try:
            check(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = name
    return parse


def output_file(*suffixes: str, new_parent: bool = False):
    """argparse type: an output file in an existing, writable directory (or, with ``new_parent``, one
    that can be created), ending in one of ``suffixes`` if given."""
    return _option_type(lambda text: check_output_file(text, suffixes, new_parent=new_parent), "output file")


output_prefix = _option_type(lambda text: check_output_file(text, prefix=True), "output prefix")
output_prefix.__doc__ = ("argparse type: a prefix of output files (PREFIX.npz, PREFIX.json, ...) in a writable directory, "
                         "or a writable directory to put them in (see :func:`prefix_for`).")
output_dir = _option_type(check_output_dir, "output directory")
output_dir.__doc__ = "argparse type: a directory that exists or can be created, and can be written."


def available_memory() -> int:
    """Bytes of memory a new allocation can get now: psutil's "available" (free plus reclaimable cache) where
    psutil is installed, else the free pages."""
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return psutil.virtual_memory().available


# The smallest tracking window (frames per forward) and frame (tokens) of the registry's models: tiny-video's.
SMALLEST_MODEL_WINDOW = 8
SMALLEST_MODEL_TOKENS = 256
# A track's point on one frame in memory and as JSON: tracks, visibility, their Python lists and text.
RESULT_BYTES_PER_FRAME = 200


def tracking_bytes_per_query(frames: int, candidates: int, viterbi: bool, bidirectional: bool,
                             window: int | None) -> int:
    """A lower bound on the memory difftrack's tracker (difftrack/tracker.py) holds for each query point, known
    before a model loads. The Viterbi pass holds, per point and frame, (K + 1) x K tables of steps, priors and
    scores (K = ``candidates``): 2.2-2.4 MB a point at K = 256 with tiny-video, of which this counts 2.1; the
    kernel's outputs take 20 bytes a candidate and 28 more per window frame, and the reverse direction 4 bytes a
    token of the window; the result, written as JSON too, RESULT_BYTES_PER_FRAME. ``window`` None (the model's
    own, unknown before it loads) counts as the smallest of the registry's."""
    window = min(frames, window or SMALLEST_MODEL_WINDOW)
    tokens = max(candidates, SMALLEST_MODEL_TOKENS)
    per_frame = (candidates * 20 if viterbi else 0) + 28 + (tokens * 4 if bidirectional else 0)
    viterbi_tables = 32 * (candidates + 1) * candidates if viterbi else 0
    return viterbi_tables + window * per_frame + frames * RESULT_BYTES_PER_FRAME


def check_query_memory(count: int, bytes_each: int, what: str, fix: Callable[[int], str]) -> None:
    """Refuse ``count`` query points of ``bytes_each`` when they cannot fit in the memory available now; ``what``
    names where the count comes from, ``fix(largest count that fits)`` says what to do instead."""
    available = available_memory()
    if count * bytes_each > available:
        raise UserError(f"{what} gives {count:,} query points, which need at least {_size(count * bytes_each)} of "
                        f"memory ({_size(bytes_each)} a point), and {_size(available)} is available here: "
                        f"{fix(available // bytes_each)}")


def _size(n: int) -> str:
    unit = max((u for u in range(4) if n >= 1024 ** u), default=0)
    return f"{n / 1024 ** unit:,.1f} {('bytes', 'KiB', 'MiB', 'GiB')[unit]}"


DTYPES = ("float32", "bfloat16", "float16")


def add_device_arguments(parser) -> None:
    """--device and --dtype, as every command that loads a model takes them."""
    parser.add_argument("--device", default=None,
                        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="working precision (default: bfloat16 on a GPU, float32 on the CPU); modules diffusers "
                             "keeps in float32 stay so")


def torch_device(name: str | None):
    """The torch device a --device value names (None: cuda when available, else cpu), refused in one line
    when it is malformed, not cpu or cuda, or asks for a GPU this torch build does not see."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asks for CUDA, but this torch build sees no GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: difftrack runs on cpu or cuda")
    return device


def device_and_dtype(device=None, dtype=None) -> dict:
    """``create_backbone`` keyword arguments (device, dtype) with the CLI's defaults, for every entry point: cuda
    when available, else cpu; bfloat16 on a GPU, float32 on the CPU. Both may be names or torch objects."""
    import torch

    device = torch_device(None if device is None else str(device))
    if dtype is None:
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        dtype = getattr(torch, dtype)
    return {"device": device, "dtype": dtype}


def backbone_options(args) -> dict:
    """``create_backbone`` keyword arguments (device, dtype) from --device / --dtype and what this machine has."""
    return device_and_dtype(args.device, args.dtype)
