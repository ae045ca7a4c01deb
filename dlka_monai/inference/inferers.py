# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The inferer a plan's network needs on whole images."""

from __future__ import annotations

from collections.abc import Sequence

from monai.inferers import Inferer, SlidingWindowInferer

from dlka_monai.inference.slice_inferer import SliceResizeInferer
from dlka_monai.runtime import PrecisionInferer

__all__ = ["window_inferer"]


def window_inferer(
    spatial_dims: int,
    img_size: int | Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    mode: str = "gaussian",
    progress: bool = False,
    precision: str = "fp32",
) -> Inferer:
    """Sliding windows of ``img_size`` over a volume for a 3D net; every axial slice (axis 0 of the SAR
    arrays) resized to ``img_size`` and back for a 2D net.

    Args:
        spatial_dims: of the network (the plan's ``spatial_dims``).
        img_size: the network's input size.
        sw_batch_size: windows (3D) or slices (2D) per forward pass.
        overlap, mode: of the 3D sliding windows (MONAI's ``SlidingWindowInferer``).
        progress: show a progress bar.
        precision: the network's precision, ``"auto" | "fp32" | "bf16" | "fp16"``
            (:class:`~dlka_monai.runtime.PrecisionInferer`); the blending of the outputs stays float32.
    """
    if spatial_dims == 2:
        inferer = SliceResizeInferer(img_size=img_size, sw_batch_size=sw_batch_size, spatial_dim=0, progress=progress)
    else:
        inferer = SlidingWindowInferer(roi_size=img_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, progress=progress)
    return inferer if precision == "fp32" else PrecisionInferer(inferer, precision)
