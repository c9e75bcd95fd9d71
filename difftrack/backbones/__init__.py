"""Backbone registry in the spirit of timm: ``register_backbone`` adds a named factory (``_registry``),
``create_backbone`` builds one from a registry name, a hub id or a local directory (``_factory``), whose files
``_hub`` finds and loads.

Adding a model family means adding one module here (its adapter, loader, checkpoints and tiny test
configuration) and its name in ``FAMILIES``; nothing in the tracker or analysis changes.
"""

from difftrack.backbones._factory import as_backbone, create_backbone
from difftrack.backbones._hub import component_loader, load_component
from difftrack.backbones._registry import (
    DEFAULT_BACKBONE,
    DEFAULT_IMAGE_TWIN,
    BackboneEntry,
    TinyConfig,
    check_known_layers,
    known_adapter,
    list_backbones,
    register_backbone,
    register_checkpoint,
    register_component_loader,
    register_pipeline_loader,
    register_tiny_config,
    tiny_configs,
)
from difftrack.backbones.base import Backbone, ProcessorCall

__all__ = ["Backbone", "ProcessorCall", "BackboneEntry", "TinyConfig", "register_backbone", "register_checkpoint",
           "register_component_loader", "register_pipeline_loader", "register_tiny_config", "tiny_configs",
           "component_loader", "load_component", "create_backbone", "as_backbone", "list_backbones",
           "check_known_layers", "known_adapter", "DEFAULT_BACKBONE", "DEFAULT_IMAGE_TWIN"]
