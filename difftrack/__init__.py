"""difftrack: temporal correspondences inside video diffusion transformers."""

import importlib

__version__ = "0.1.0"

# The public API by defining module, each imported on first use (PEP 562): `import difftrack`, which every
# command's argument checks pay, stays free of torch.
_PUBLIC = {"create_backbone": "difftrack.backbones", "list_backbones": "difftrack.backbones",
           "register_backbone": "difftrack.backbones", "DescriptorCapture": "difftrack.capture",
           "Descriptors": "difftrack.capture", "TokenGeometry": "difftrack.geometry", "UserError": "difftrack.errors"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'difftrack' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_PUBLIC[name]), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
