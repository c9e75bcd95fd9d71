"""Backbone registry in the spirit of timm: ``register_backbone`` adds a named factory,
``create_backbone`` builds one from a registry name, a hub id or a local directory.

Adding a model family means adding one module here (its adapter, loader, checkpoints and tiny test
configuration) and its name in ``_import_families``; nothing in the tracker or analysis changes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from difftrack.backbones.base import Backbone, Deferred, ProcessorCall
from difftrack.errors import UserError, check_index_range


@dataclass
class BackboneEntry:
    name: str
    factory: Callable[..., Backbone]
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


_REGISTRY: dict[str, BackboneEntry] = {}
# model_index.json `_class_name` -> [(claims, loader)]: a loader takes (directory, **kw); ``claims(directory)``
# tells a family apart from another saved under the same pipeline class (None: every other directory).
_PIPELINE_LOADERS: dict[str, list[tuple[Callable[[str], bool] | None, Callable[..., Backbone]]]] = {}
DEFAULT_BACKBONE = "tiny-video"
DEFAULT_IMAGE_TWIN = "tiny-image"  # the default model's image twin, for video-vs-image comparisons


@dataclass
class TinyConfig:
    """A family's tiny test configuration: the stock classes at tiny width with the checkpoints' geometry
    (latent channels, VAE compression, patch sizes, scheduler), built offline with random weights. ``build(seed=...)`` returns the
    pipeline's components; ``pipeline_class`` names the diffusers pipeline that saves them, with the
    pipeline settings ``pipeline_kwargs`` (model_index.json entries that are no component)."""

    kind: str
    build: Callable[..., dict]
    pipeline_class: str
    backbone_class: type
    pipeline_kwargs: dict | None = None


_TINY_CONFIGS: dict[str, TinyConfig] = {}


def register_backbone(name: str, *, source: str, description: str, weights_present: Callable[[], bool],
                      adapter: type | None = None, transformer_config: Callable[[], str | None] | None = None,
                      architecture: tuple[int, int] | None = None):
    def wrap(factory):
        _REGISTRY[name] = BackboneEntry(name, factory, source, description, weights_present, adapter,
                                        transformer_config or (lambda: None), architecture)
        return factory

    return wrap


def register_checkpoint(name: str, hub_id: str, loader: Callable[..., Backbone], adapter: type,
                        description: str, architecture: tuple[int, int]) -> None:
    """A registry name for a hub checkpoint that ``loader(where, name=..., **kw)`` loads (from the local cache);
    ``architecture`` is its (attention layers, heads), so its defaults are known before its weights are here."""

    def transformer_config():
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(hub_id, "transformer/config.json")
        return path if isinstance(path, str) else None

    register_backbone(name, source=hub_id, description=description, weights_present=hub_weights_present(hub_id),
                      adapter=adapter, transformer_config=transformer_config, architecture=architecture)(
        lambda **kw: loader(hub_snapshot(hub_id), name=name, **kw))


def register_pipeline_loader(*pipeline_class_names: str, claims: Callable[[str], bool] | None = None):
    """Register ``loader`` for directories whose model_index.json names one of ``pipeline_class_names``;
    with ``claims``, only for those directories it accepts (tried before the class's unconditional loader)."""

    def wrap(loader):
        for n in pipeline_class_names:
            entries = _PIPELINE_LOADERS.setdefault(n, [])
            entries.insert(0 if claims is not None else len(entries), (claims, loader))
        return loader

    return wrap


def register_tiny_config(kind: str, build: Callable[..., dict], pipeline_class: str, backbone_class: type,
                         pipeline_kwargs: dict | None = None) -> None:
    _TINY_CONFIGS[kind] = TinyConfig(kind, build, pipeline_class, backbone_class, pipeline_kwargs)


def tiny_configs() -> dict[str, TinyConfig]:
    """Every family's tiny test configurations, by kind."""
    _import_families()
    return dict(_TINY_CONFIGS)


def list_backbones() -> list[BackboneEntry]:
    _import_families()
    names = sorted(_REGISTRY, key=lambda n: (n != DEFAULT_BACKBONE, n))
    return [_REGISTRY[n] for n in names]


def create_backbone(name_or_path: str = DEFAULT_BACKBONE, device=None, dtype=None, **kwargs) -> Backbone:
    """Build a backbone from a registry name, a local diffusers pipeline directory or a hub id, on ``device`` in
    ``dtype`` (the CLI's defaults: cuda when available, else cpu; bfloat16 on a GPU, float32 on the CPU)."""
    from difftrack.options import device_and_dtype

    _import_families()
    kwargs.update(device_and_dtype(device, dtype))
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path].factory(**kwargs)
    if os.path.isdir(name_or_path):
        index = os.path.join(name_or_path, "model_index.json")
        if not os.path.isfile(index):
            raise UserError(f"{name_or_path} has no model_index.json: point --model at a diffusers pipeline "
                            f"directory (save_pretrained output) or use one of: {', '.join(_REGISTRY)}")
        cls_name = read_json_file(index, "a pipeline's model_index.json").get("_class_name", "")
        return _loader_for(cls_name, name_or_path, name_or_path)(name_or_path, **kwargs)
    if "/" in name_or_path:
        cls_name = _hub_pipeline_class(name_or_path)
        where = hub_snapshot(name_or_path)
        return _loader_for(cls_name, name_or_path, where)(where, **{"name": name_or_path, **kwargs})
    raise UserError(f"unknown model {name_or_path!r}; known: {', '.join(_REGISTRY)} "
                    f"(or a hub id like THUDM/CogVideoX-2b, or a local pipeline directory)")


def known_layer_count(name_or_path: str) -> int | None:
    """Attention layers of a model, from the registry or its transformer config alone, without loading weights
    (None where neither is here, for the loaded model to check)."""
    _import_families()
    entry = _REGISTRY.get(name_or_path)
    if entry is not None:
        path = entry.transformer_config()
        if entry.adapter is not None and path is not None and os.path.isfile(path):
            return entry.adapter.architecture(read_json_file(path, "a transformer config"))[0]
        return entry.architecture[0] if entry.architecture else None
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "transformer", "config.json")
    elif "/" in name_or_path:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(name_or_path, "transformer/config.json")
    else:
        return None
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    config = read_json_file(path, "a transformer config")
    if "num_layers" not in config:
        return None
    # Every family's config counts its attention blocks in num_layers, HunyuanVideo's single-stream ones apart.
    return int(config["num_layers"]) + int(config.get("num_single_layers", 0))


def check_known_layers(name_or_path: str, layers) -> None:
    """Refuse layer indices outside the model's range before its weights load, where the range is known then."""
    count = known_layer_count(name_or_path)
    if layers and count is not None:
        check_index_range("layer", layers, count)


def as_backbone(model: str | Backbone, device=None, dtype=None) -> Backbone:
    """``model`` itself when it is a backbone already, else :func:`create_backbone` of it on device in dtype."""
    return model if isinstance(model, Backbone) else create_backbone(model, device=device, dtype=dtype)


def _loader_for(cls_name: str, name: str, directory: str):
    for claims, loader in _PIPELINE_LOADERS.get(cls_name, ()):
        if claims is None or claims(directory):
            return loader
    raise UserError(f"{name} is a {cls_name or 'unknown'} pipeline; supported pipelines: "
                    f"{', '.join(sorted(_PIPELINE_LOADERS))}")


def _hub_pipeline_class(repo_id: str) -> str:
    """Read model_index.json of a hub id from the local cache only (this machine has no hub access)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(path, str):
        raise UserError(f"weights for {repo_id} are not in the local Hugging Face cache and cannot be fetched here: "
                        f"run `huggingface-cli download {repo_id}` on a connected machine (or copy the directory) "
                        f"and pass it with --model")
    return read_json_file(path, "a pipeline's model_index.json").get("_class_name", "")


def read_json_file(path: str, what: str) -> dict:
    """The JSON object in ``path``, which should be ``what``; one line naming the file when it is damaged."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): a damaged or cut-short copy of {what}; copy or "
                        f"download the model again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not {what}; copy or download the model again")
    return data


def hub_snapshot(repo_id: str) -> str:
    """The local directory of a hub id's snapshot in the Hugging Face cache (as `huggingface-cli download`
    leaves it: models--org--name/snapshots/<commit>, refs/main), so every component loads from a plain
    directory; nothing is fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        raise UserError(f"weights for {repo_id} are not in the local Hugging Face cache and cannot be fetched here: "
                        f"run `huggingface-cli download {repo_id}` on a connected machine (or copy the directory) "
                        f"and pass it with --model") from None


def hub_weights_present(repo_id: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
        except Exception:  # noqa: BLE001 - a broken cache simply means "not present"
            return False

    return check


def load_component(cls, where: str, subfolder: str | None = None, **kwargs):
    """`cls.from_pretrained` from a local directory or the local hub cache, with one clear line when absent."""
    try:
        with _held_library_logs():
            if subfolder is None:
                return cls.from_pretrained(where, local_files_only=True, **kwargs)
            return cls.from_pretrained(where, subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, EnvironmentError, ValueError) as exc:
        raise UserError(_load_failure(cls, where, subfolder, exc)) from None


# Weights files as diffusers and transformers save them (single, sharded with an index, or pickled).
_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth", ".ckpt")


def _load_failure(cls, where: str, subfolder: str | None, exc: Exception) -> str:
    """The one line for a component that does not load: which file is missing or damaged, and how to get it."""
    folder = os.path.join(where, subfolder) if subfolder else where
    snapshot = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", where.replace(os.sep, "/"))
    fix = (f"run `huggingface-cli download {snapshot[1]}/{snapshot[2]}` on a connected machine" if snapshot else
           "copy the whole pipeline directory again, or write it with the pipeline's save_pretrained")
    weights = sorted(f for f in os.listdir(folder) if f.endswith(_WEIGHTS_SUFFIXES)) if os.path.isdir(folder) else []
    if not os.path.isdir(folder):
        reason = f"{folder} does not exist"
    elif issubclass(cls, torch.nn.Module) and not weights:
        expected = "model.safetensors" if cls.__module__.startswith("transformers") else \
            "diffusion_pytorch_model.safetensors"
        reason = f"{folder} holds no weights file ({expected})"
    elif weights and "Unable to load weights" in str(exc):
        reason = f"{', '.join(os.path.join(folder, f) for f in weights)} is damaged or cut short"
    else:
        reason = f"{folder}: " + (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return f"cannot load {cls.__name__}, {reason}; {fix}"


@contextlib.contextmanager
def _held_library_logs():
    """Hold what diffusers and transformers log while a component loads: a load that fails becomes one line of
    ours (their guesses, such as fetching from the hub, would only mislead), one that succeeds shows them."""
    names = [name for name in ("diffusers", "transformers") if name in sys.modules]
    for name in names:  # each library installs its stderr handler on first use: now, not while ours is in place
        importlib.import_module(f"{name}.utils.logging").get_logger(name)
    loggers = [logging.getLogger(name) for name in names]
    saved = [list(logger.handlers) for logger in loggers]
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record):
            held.append(record)

    for logger in loggers:
        logger.handlers = [Hold()]
    try:
        yield
    finally:
        for logger, handlers in zip(loggers, saved):
            logger.handlers = handlers
    for record in held:
        logging.getLogger(record.name).handle(record)


def load_components(where: str, dtype, device, float32: tuple[str, ...] = (), **classes) -> dict:
    """The components of a pipeline directory, by subfolder: ``classes`` maps each subfolder to its class.
    Models load in ``dtype`` (those named in ``float32`` in float32, as their stock pipeline runs them) for
    inference on ``device``; text encoders are deferred to their first use; tokenizers and schedulers load
    as they are."""
    components = {}
    for name, cls in classes.items():
        if name.startswith(("tokenizer", "scheduler")):
            components[name] = load_component(cls, where, name)
            continue
        kwargs = {"torch_dtype": torch.float32 if name in float32 else dtype}
        if name.startswith("text_encoder"):
            components[name] = deferred_component(cls, where, name, device, **kwargs)
        else:
            components[name] = load_component(cls, where, name, **kwargs).to(device).eval().requires_grad_(False)
    return components


def component_loader(adapter: type, classes: Callable[[], dict], float32: tuple[str, ...] = ()):
    """A pipeline loader ``load(where, dtype, device, name, **adapter_kwargs)``: the components that
    ``classes()`` maps from subfolder to class, loaded by :func:`load_components`, in ``adapter``."""

    def load(where, dtype=torch.float32, device="cpu", name=None, **kwargs):
        components = load_components(where, dtype, device, float32, **classes())
        return adapter(name or where, source=where, **components, **kwargs)

    return load


def deferred_component(cls, where: str, subfolder: str, device, **kwargs) -> Deferred:
    """A component that :func:`load_component` loads (for inference, on ``device``) only when first used."""
    return Deferred(lambda: load_component(cls, where, subfolder, **kwargs).to(device).eval().requires_grad_(False))


def _import_families() -> None:
    # Importing a family module registers its entries; kept lazy so `import difftrack` stays light.
    from difftrack.backbones import cogvideox, embedded, hunyuan, ltx, wan, wan22  # noqa: F401


__all__ = ["Backbone", "Deferred", "ProcessorCall", "deferred_component", "BackboneEntry", "TinyConfig", "register_backbone", "register_checkpoint", "register_pipeline_loader",
           "register_tiny_config", "tiny_configs", "component_loader",
           "create_backbone", "list_backbones", "load_component", "hub_weights_present", "DEFAULT_BACKBONE",
           "DEFAULT_IMAGE_TWIN"]
