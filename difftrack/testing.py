"""Test helpers over the families' tiny configurations (``difftrack.backbones.tiny_configs``): random
weights, stock classes, built offline.

Used by the tests (every code path, no hub access) and by benchmarks that need a model with a real
model's token geometry but negligible width. The product never imports this module.
"""

from __future__ import annotations

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
