from .slice_inferer import SliceResizeInferer
from .transforms import SafeSpacingd
from .tta import FlipTTAInferer

__all__ = ["FlipTTAInferer", "SafeSpacingd", "SliceResizeInferer"]
