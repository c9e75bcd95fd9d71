"""Building a backbone from a registry name, a local diffusers pipeline directory or a hub id."""

from __future__ import annotations

import os

from difftrack.backbones._hub import hub_pipeline_class, hub_snapshot, is_hub_id, read_json_file
from difftrack.backbones._registry import DEFAULT_BACKBONE, pipeline_loader, registered, registry_names
from difftrack.backbones.base import Backbone
from difftrack.errors import UserError


def create_backbone(name_or_path: str = DEFAULT_BACKBONE, device=None, dtype=None, **kwargs) -> Backbone:
    """Build a backbone from a registry name, a local diffusers pipeline directory or a hub id, on ``device`` in
    ``dtype`` (the CLI's defaults: cuda when available, else cpu; bfloat16 on a GPU, float32 on the CPU)."""
    from difftrack.options import device_and_dtype

    kwargs.update(device_and_dtype(device, dtype))
    entry = registered(name_or_path)
    if entry is not None:
        return entry.factory(**kwargs)
    if os.path.isdir(name_or_path):
        index = os.path.join(name_or_path, "model_index.json")
        if not os.path.isfile(index):
            raise UserError(f"{name_or_path} has no model_index.json: point --model at a diffusers pipeline "
                            f"directory (save_pretrained output) or use one of: {', '.join(registry_names())}")
        cls_name = read_json_file(index, "a pipeline's model_index.json").get("_class_name", "")
        return pipeline_loader(cls_name, name_or_path, name_or_path).load(name_or_path, **kwargs)
    if is_hub_id(name_or_path):
        cls_name = hub_pipeline_class(name_or_path)
        where = hub_snapshot(name_or_path)
        return pipeline_loader(cls_name, name_or_path, where).load(where, **{"name": name_or_path, **kwargs})
    if "/" in name_or_path:
        raise UserError(f"there is no model directory at {name_or_path}, and it is not a hub id like "
                        f"THUDM/CogVideoX-2b; check the path")
    raise UserError(f"unknown model {name_or_path!r}; known: {', '.join(registry_names())} "
                    f"(or a hub id like THUDM/CogVideoX-2b, or a local pipeline directory)")


def as_backbone(model: str | Backbone, device=None, dtype=None) -> Backbone:
    """``model`` itself when it is a backbone already, else :func:`create_backbone` of it on device in dtype."""
    return model if isinstance(model, Backbone) else create_backbone(model, device=device, dtype=dtype)
