"""Where a model's files are and how its components load: hub ids in the local Hugging Face cache (nothing is
ever fetched), local pipeline directories, their JSON files, and each component's ``from_pretrained`` with one
clear line when it fails."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
from typing import Callable

from difftrack.backbones.offload import Deferred
from difftrack.errors import UserError


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


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub id (``org/name``); a path of more parts, or absolute, has not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def cached_hub_file(repo_id: str, filename: str) -> str | None:
    """The path of a hub id's file in the local Hugging Face cache, None when it is not there (or ``repo_id`` is
    no hub id)."""
    from huggingface_hub import try_to_load_from_cache

    if not is_hub_id(repo_id):
        return None
    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) else None


def _not_in_cache(repo_id: str) -> UserError:
    return UserError(f"weights for {repo_id} are not in the local Hugging Face cache and cannot be fetched here: "
                     f"run `huggingface-cli download {repo_id}` on a connected machine (or copy the directory) "
                     f"and pass it with --model (if you meant a local directory: there is none at {repo_id})")


def hub_pipeline_class(repo_id: str) -> str:
    """The pipeline class in a hub id's model_index.json, read from the local cache only."""
    path = cached_hub_file(repo_id, "model_index.json")
    if path is None:
        raise _not_in_cache(repo_id)
    return read_json_file(path, "a pipeline's model_index.json").get("_class_name", "")


def hub_snapshot(repo_id: str) -> str:
    """The local directory of a hub id's snapshot in the Hugging Face cache (as `huggingface-cli download`
    leaves it: models--org--name/snapshots/<commit>, refs/main), so every component loads from a plain
    directory; nothing is fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        raise _not_in_cache(repo_id) from None


def hub_weights_present(repo_id: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cached_hub_file(repo_id, "model_index.json") is not None
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
    import torch

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
    import torch

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
    ``classes()`` maps from subfolder to class, loaded by :func:`load_components`, in ``adapter``
    (float32 on the CPU unless ``dtype`` and ``device`` say otherwise)."""

    def load(where, dtype=None, device="cpu", name=None, **kwargs):
        import torch

        components = load_components(where, dtype or torch.float32, device, float32, **classes())
        return adapter(name or where, source=where, **components, **kwargs)

    return load


def deferred_component(cls, where: str, subfolder: str, device, **kwargs) -> Deferred:
    """A component that :func:`load_component` loads (for inference, on ``device``) only when first used."""
    return Deferred(lambda: load_component(cls, where, subfolder, **kwargs).to(device).eval().requires_grad_(False))
