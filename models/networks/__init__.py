"""The DISARM networks, one module per part, and their configuration."""

from .anatomy_encoder import AnatomyEncoder
from .config import (
    NetworkConfig,
    curves_config,
    fast_config,
    get_config,
    head_curves_config,
    landmark_curves_config,
    reference_config,
    restoring_curves_config,
    window_curves_config,
)
from .discriminators import ContentDiscriminator, ImageDiscriminator
from .generator import Generator
from .restorer import Restorer
from .scanner_encoder import ScannerEncoder

__all__ = [
    "AnatomyEncoder",
    "ScannerEncoder",
    "Generator",
    "Restorer",
    "ContentDiscriminator",
    "ImageDiscriminator",
    "NetworkConfig",
    "reference_config",
    "fast_config",
    "curves_config",
    "window_curves_config",
    "head_curves_config",
    "landmark_curves_config",
    "restoring_curves_config",
    "get_config",
]
