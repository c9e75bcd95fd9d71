"""Test helpers: the families' tiny configurations (``difftrack.backbones.tiny_configs``: random weights,
stock classes, built offline), bit-for-bit comparison of outputs, and inputs the commands must refuse.

Used by the tests (every code path, no hub access) and by benchmarks that need a model with a real
model's token geometry but negligible width, or bad input to time. The product never imports this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difftrack.backbones import tiny_configs

TINY_KINDS = tuple(tiny_configs())


def tiny_components(kind: str, seed: int = 0) -> dict:
    return tiny_configs()[kind].build(seed=seed)


def tiny_pipeline_class(kind: str):
    """The diffusers pipeline class that saves ``kind``'s components, bound to its pipeline settings."""
    import functools

    import diffusers

    config = tiny_configs()[kind]
    return functools.partial(getattr(diffusers, config.pipeline_class), **(config.pipeline_kwargs or {}))


def save_pipeline(components: dict, pipeline_cls, path) -> None:
    """Write components as a diffusers pipeline directory (model_index.json + subfolders)."""
    pipe = pipeline_cls(**components)
    pipe.save_pretrained(str(path), safe_serialization=True)


def tiny_backbone(kind: str, seed: int = 0):
    """A tiny random backbone of ``kind`` (one of ``TINY_KINDS``), built in memory from its components."""
    c = dict(tiny_components(kind, seed))
    core = [c.pop(name) for name in ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")]
    return tiny_configs()[kind].backbone_class(f"tiny-{kind}", *core, source="memory", **c)


def as_arrays(value):
    """An output (tensor, array, or nested tuples, lists and dicts of them) as nested tuples of numpy arrays,
    dict values in key order."""
    if isinstance(value, (tuple, list)):
        return tuple(as_arrays(v) for v in value)
    if isinstance(value, dict):
        return tuple(as_arrays(v) for _, v in sorted(value.items()))
    if torch.is_tensor(value):
        return value.float().cpu().numpy()
    return np.asarray(value)


def same_bits(a, b) -> bool:
    """Whether two outputs (as :func:`as_arrays` makes them) are bit for bit the same; a NaN (a metric with nothing
    to count) is the same as a NaN."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc")


def bad_inputs(folder: Path) -> None:
    """Inputs the commands must refuse, or accept only when asked, written into ``folder``: clip.mp4 (8 frames, a
    good one to pair with bad options), one_frame.mp4, damaged.mp4 (an MP4 of 24 frames by write_video, 1,000 bytes
    in its middle overwritten; whole.mp4 is the intact one), tracks.npy (a bare array) and nan.json (a point at
    NaN)."""
    from difftrack.data.synthetic import generate_clip
    from difftrack.io import write_video

    write_video(folder / "clip.mp4", generate_clip(3, num_frames=8, height=64, width=64).video)
    write_video(folder / "one_frame.mp4", generate_clip(3, num_frames=1, height=64, width=64).video)
    write_video(folder / "whole.mp4", generate_clip(1, num_frames=24, height=64, width=64).video)
    data = bytearray((folder / "whole.mp4").read_bytes())
    data[len(data) // 2:len(data) // 2 + 1000] = np.random.default_rng(0).integers(0, 256, 1000, np.uint8).tobytes()
    (folder / "damaged.mp4").write_bytes(bytes(data))
    np.save(folder / "tracks.npy", np.zeros((8, 2, 2), np.float32))
    (folder / "nan.json").write_text("[[NaN, 10, 10]]")
