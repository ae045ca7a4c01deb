from .ensemble import EnsembleInferer, load_ensemble
from .inferers import window_inferer
from .slice_inferer import SliceResizeInferer
from .transforms import InvertArgmaxd, SafeSpacingd
from .tta import FlipTTAInferer

__all__ = [
    "EnsembleInferer",
    "load_ensemble",
    "FlipTTAInferer",
    "InvertArgmaxd",
    "SafeSpacingd",
    "SliceResizeInferer",
    "window_inferer",
]
