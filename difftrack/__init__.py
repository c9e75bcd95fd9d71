"""difftrack: temporal correspondences inside video diffusion transformers."""

__version__ = "0.1.0"

from difftrack.backbones import create_backbone, list_backbones, register_backbone  # noqa: E402
from difftrack.capture import DescriptorCapture, Descriptors  # noqa: E402
from difftrack.errors import UserError  # noqa: E402
from difftrack.geometry import TokenGeometry  # noqa: E402

__all__ = [
    "__version__",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "DescriptorCapture",
    "Descriptors",
    "TokenGeometry",
    "UserError",
]
