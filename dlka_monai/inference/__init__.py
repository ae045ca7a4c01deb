from .tta import FlipTTAInferer

__all__ = ["FlipTTAInferer"]
