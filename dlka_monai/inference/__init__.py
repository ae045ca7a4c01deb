from .slice_inferer import SliceResizeInferer
from .tta import FlipTTAInferer

__all__ = ["FlipTTAInferer", "SliceResizeInferer"]
