"""What difftrack knows about its model families without loading any weights: registry names, the pipeline
classes each family loads, the families' tiny test configurations, and what a model's configs tell (its layer
count, the method's defaults).

Each family module registers its own entries when imported; ``FAMILIES`` lists those modules. Nothing here
imports torch or diffusers, so that a command checks its arguments against these facts in a fraction of a
second.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from difftrack.backbones._hub import cached_hub_file, component_loader, hub_snapshot, hub_weights_present
from difftrack.backbones._hub import read_json_file
from difftrack.errors import UserError, check_index_range

# The family modules under difftrack/backbones/; adding a family adds its module here.
FAMILIES = ("cogvideox", "embedded", "hunyuan", "ltx", "wan", "wan22")
DEFAULT_BACKBONE = "tiny-video"
DEFAULT_IMAGE_TWIN = "tiny-image"  # the default model's image twin, for video-vs-image comparisons


@dataclass
class BackboneEntry:
    name: str
    factory: Callable
    source: str
    description: str
    weights_present: Callable[[], bool]
    adapter: type | None = None
    transformer_config: Callable[[], str | None] = lambda: None  # path of transformer/config.json, if here
    architecture: tuple[int, int] | None = None  # (attention layers, heads) of the checkpoint, known without it

    def defaults(self) -> dict | None:
        """The method's defaults for this entry's architecture, from its config when it is here, else from the
        architecture the registry records (None when neither is known)."""
        path = self.transformer_config()
        if self.adapter is None:
            return None
        if path is not None and os.path.isfile(path):
            defaults = self.adapter.defaults_for(read_json_file(path, "a transformer config"))
        elif self.architecture is not None:
            defaults = self.adapter.defaults_for_architecture(*self.architecture)
        else:
            return None
        return {**defaults, "cag_layers": None if self.adapter.cag_refusal else defaults["cag_layers"]}


@dataclass
class PipelineLoader:
    """How directories of one diffusers pipeline class load: ``load(directory, **kw)`` builds an ``adapter``;
    ``claims(directory)`` tells a family apart from another saved under the same class (None: any other)."""

    load: Callable
    adapter: type
    claims: Callable[[str], bool] | None = None


@dataclass
class TinyConfig:
    """A family's tiny test configuration: the stock classes at tiny width with the checkpoints' geometry
    (latent channels, VAE compression, patch sizes, scheduler), built offline with random weights.
    ``build(seed=...)`` returns the pipeline's components; ``pipeline_class`` names the diffusers pipeline
    that saves them, with the pipeline settings ``pipeline_kwargs`` (model_index.json entries that are no
    component); ``compression`` is the checkpoints' (temporal, spatial) VAE compression and ``patch_size``
    their transformer's, which the tiny components must reproduce."""

    kind: str
    build: Callable[..., dict]
    pipeline_class: str
    backbone_class: type
    compression: tuple[int, int]
    patch_size: int
    pipeline_kwargs: dict | None = None


_REGISTRY: dict[str, BackboneEntry] = {}
_PIPELINE_LOADERS: dict[str, list[PipelineLoader]] = {}  # by model_index.json `_class_name`
_TINY_CONFIGS: dict[str, TinyConfig] = {}


def register_backbone(name: str, *, source: str, description: str, weights_present: Callable[[], bool],
                      adapter: type | None = None, transformer_config: Callable[[], str | None] | None = None,
                      architecture: tuple[int, int] | None = None):
    def wrap(factory):
        _REGISTRY[name] = BackboneEntry(name, factory, source, description, weights_present, adapter,
                                        transformer_config or (lambda: None), architecture)
        return factory

    return wrap


def register_checkpoint(name: str, hub_id: str, loader: Callable, adapter: type, description: str,
                        architecture: tuple[int, int]) -> None:
    """A registry name for a hub checkpoint that ``loader(where, name=..., **kw)`` loads (from the local cache);
    ``architecture`` is its (attention layers, heads), so its defaults are known before its weights are here."""
    register_backbone(name, source=hub_id, description=description, weights_present=hub_weights_present(hub_id),
                      adapter=adapter, transformer_config=lambda: cached_hub_file(hub_id, "transformer/config.json"),
                      architecture=architecture)(lambda **kw: loader(hub_snapshot(hub_id), name=name, **kw))


def register_pipeline_loader(*pipeline_class_names: str, adapter: type, claims: Callable[[str], bool] | None = None):
    """Register ``loader`` for directories whose model_index.json names one of ``pipeline_class_names``, loading
    ``adapter``; with ``claims``, only for those directories it accepts (tried before the class's unconditional
    loader)."""

    def wrap(loader):
        for n in pipeline_class_names:
            entries = _PIPELINE_LOADERS.setdefault(n, [])
            entries.insert(0 if claims is not None else len(entries), PipelineLoader(loader, adapter, claims))
        return loader

    return wrap


def register_component_loader(pipeline_class_name: str, adapter: type, classes: Callable[[], dict],
                              float32: tuple[str, ...] = ()) -> Callable:
    """Register, for directories of ``pipeline_class_name``, the loader of the components ``classes()`` maps from
    subfolder to class into ``adapter`` (:func:`~difftrack.backbones._hub.component_loader`); returns it."""
    return register_pipeline_loader(pipeline_class_name, adapter=adapter)(component_loader(adapter, classes, float32))


def register_tiny_config(kind: str, build: Callable[..., dict], pipeline_class: str, backbone_class: type, *,
                         compression: tuple[int, int], patch_size: int, pipeline_kwargs: dict | None = None) -> None:
    _TINY_CONFIGS[kind] = TinyConfig(kind, build, pipeline_class, backbone_class, compression, patch_size,
                                     pipeline_kwargs)


def import_families() -> None:
    """Import every family module, which registers its entries (on first use, so `import difftrack` stays light)."""
    for family in FAMILIES:
        importlib.import_module(f"difftrack.backbones.{family}")


def registered(name: str) -> BackboneEntry | None:
    import_families()
    return _REGISTRY.get(name)


def registry_names() -> list[str]:
    import_families()
    return list(_REGISTRY)


def tiny_configs() -> dict[str, TinyConfig]:
    """Every family's tiny test configurations, by kind."""
    import_families()
    return dict(_TINY_CONFIGS)


def list_backbones() -> list[BackboneEntry]:
    import_families()
    names = sorted(_REGISTRY, key=lambda n: (n != DEFAULT_BACKBONE, n))
    return [_REGISTRY[n] for n in names]


def pipeline_loader(cls_name: str, name: str, directory: str) -> PipelineLoader:
    """The loader of a pipeline directory whose model_index.json names ``cls_name`` (``name``: how the user gave it)."""
    import_families()
    for loader in _PIPELINE_LOADERS.get(cls_name, ()):
        if loader.claims is None or loader.claims(directory):
            return loader
    raise UserError(f"{name} is a {cls_name or 'unknown'} pipeline; supported pipelines: "
                    f"{', '.join(sorted(_PIPELINE_LOADERS))}")


def known_adapter(name_or_path: str) -> type | None:
    """The adapter a model loads into, from the registry or its model_index.json alone, without loading weights
    (None where that file is not here)."""
    entry = registered(name_or_path)
    if entry is not None:
        return entry.adapter
    index = _model_file(name_or_path, "model_index.json")
    if index is None:
        return None
    cls_name = read_json_file(index, "a pipeline's model_index.json").get("_class_name", "")
    return pipeline_loader(cls_name, name_or_path, os.path.dirname(index)).adapter


def known_layer_count(name_or_path: str) -> int | None:
    """Attention layers of a model, from the registry or its configs alone, without loading weights (None where
    they are not here, for the loaded model to check)."""
    entry = registered(name_or_path)
    if entry is not None:
        path = entry.transformer_config()
        if entry.adapter is not None and path is not None and os.path.isfile(path):
            return _layer_count(entry.adapter, path)
        return entry.architecture[0] if entry.architecture else None
    config = _model_file(name_or_path, "transformer/config.json")
    adapter = known_adapter(name_or_path) if config is not None else None
    return None if adapter is None else _layer_count(adapter, config)


def _model_file(name_or_path: str, filename: str) -> str | None:
    """A pipeline file of a local directory or of a hub id's cached snapshot, where it is here."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
    elif "/" in name_or_path:
        path = cached_hub_file(name_or_path, filename)
    else:
        return None
    return path if path is not None and os.path.isfile(path) else None


def _layer_count(adapter: type, config_path: str) -> int | None:
    try:
        return adapter.architecture(read_json_file(config_path, "a transformer config"))[0]
    except KeyError:  # a config without the family's layer counts: the loaded model checks
        return None


def check_known_layers(name_or_path: str, layers) -> None:
    """Refuse layer indices outside the model's range before its weights load, where the range is known then."""
    count = known_layer_count(name_or_path) if layers else None
    if count is not None:
        check_index_range("layer", layers, count)
