"""The empty prompt's conditioning, computed once per model and cached on disk (safetensors).

Tracking and analysis of real videos, and inversion, condition on the empty prompt only. Its
embedding (and any extras the adapter passes to ``predict``) is written to
``$DIFFTRACK_CACHE/prompt_embeddings/<key>.safetensors`` (default ``~/.cache/difftrack``), keyed by the
model directory, the adapter, the dtype and a fingerprint of every text-encoder and tokenizer file (path,
size, and the first and last MiB of its bytes), so a later run never loads the text encoder, and a
changed text encoder never reads a stale embedding. Backbones built in memory are not cached.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMAT = 1
_EDGE = 2**20


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFTRACK_CACHE") or Path.home() / ".cache" / "difftrack") / "prompt_embeddings"


def _fingerprint(path: Path) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_EDGE)
        fh.seek(max(size - _EDGE, 0))
        tail = fh.read(_EDGE)
    return hashlib.sha256(b"%d" % size + head + tail).digest()


def cache_key(backbone) -> str | None:
    """The cache file stem for ``backbone``, or None when it was not loaded from a directory."""
    source = Path(backbone.source) if backbone.source else None
    if source is None or not source.is_dir():
        return None
    text_parts = sorted(p for p in source.iterdir() if p.is_dir() and p.name.startswith(("text_encoder", "tokenizer")))
    digest = hashlib.sha256(f"{FORMAT}|{source.resolve()}|{type(backbone).__name__}|{backbone.dtype}".encode())
    for part in text_parts:
        for f in sorted(p for p in part.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(source)).encode() + _fingerprint(f))
    return digest.hexdigest()[:32]


def empty_conditioning(backbone) -> tuple[torch.Tensor, dict]:
    import torch
    from safetensors.torch import load_file, save_file

    from difftrack.io import atomic_path

    key = cache_key(backbone)
    path = None if key is None else cache_dir() / f"{key}.safetensors"
    if path is not None and path.is_file():
        stored = load_file(path, device=str(backbone.device))
        extras = {name.removeprefix("extra."): value for name, value in stored.items() if name.startswith("extra.")}
        return stored["embeds"], extras
    embeds, extras = backbone.encode_conditioning([""])
    if path is not None and all(torch.is_tensor(v) for v in extras.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeds": embeds, **{f"extra.{name}": value for name, value in extras.items()}}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(tmp))
    return embeds, extras
