# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Slice-wise inference of a fixed-size 2D network on 3D volumes (or 2D images) of any size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SliceInferer

__all__ = ["SliceResizeInferer"]


class SliceResizeInferer(Inferer):
    """Run a 2D net with a fixed input size (``img_size``) on images of any size: each 2D image, or each slice
    along ``spatial_dim`` of a 3D volume (via MONAI's ``SliceInferer``), is resized to ``img_size``, predicted,
    and its logits resized back to the slice's size, as TransUNet's slice-wise test does.

    ``__call__(inputs, network)``: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` -> logits of the same spatial shape.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        sw_batch_size: int = 1,
        spatial_dim: int = 0,
        mode: str = "bilinear",
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = (int(img_size),) * 2 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.sw_batch_size = sw_batch_size
        self.spatial_dim = spatial_dim
        self.mode = mode
        self.progress = progress

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        def predictor(x: torch.Tensor) -> torch.Tensor:
            size = x.shape[2:]
            return self._resize(network(self._resize(x, self.img_size), *args, **kwargs), size)

        if inputs.ndim == 4:
            return predictor(inputs)
        if inputs.ndim != 5:
            raise ValueError(f"inputs should be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(inputs.shape)}.")
        inferer = SliceInferer(
            spatial_dim=self.spatial_dim,
            roi_size=(-1, -1),
            sw_batch_size=self.sw_batch_size,
            overlap=0.0,
            progress=self.progress,
        )
        return inferer(inputs, predictor)
