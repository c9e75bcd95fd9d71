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
    """An output file (or, with ``prefix``, a file-name prefix) in an existing, writable directory, or
    with ``new_parent`` in one that the caller will create."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{path} must end in {' or '.join(suffixes)}")
    if path.is_dir() and not prefix:
        raise UserError(f"{path} is a directory; give a file name inside it")
    if not new_parent and not path.parent.exists():
        raise UserError(f"directory {path.parent} does not exist; create it first")
    problem = writable_directory_problem(path.parent)
    if problem:
        raise UserError(problem)
    return path


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
output_prefix.__doc__ = "argparse type: a prefix of output files (PREFIX.npz, PREFIX.json, ...) in a writable directory."
output_dir = _option_type(check_output_dir, "output directory")
output_dir.__doc__ = "argparse type: a directory that exists or can be created, and can be written."


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


def backbone_options(args) -> dict:
    """``create_backbone`` keyword arguments (device, dtype) from --device / --dtype and what this machine has."""
    import torch

    device = torch_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return {"device": device, "dtype": getattr(torch, dtype)}
