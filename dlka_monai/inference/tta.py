# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Mirroring test-time augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from monai.inferers import Inferer

__all__ = ["FlipTTAInferer"]


class FlipTTAInferer(Inferer):
    """Average the logits of an inferer over the input and its flips along every combination of
    ``spatial_axes`` (8 passes for 3 axes), as nnU-Net's mirroring does.

    Args:
        inferer: the inferer to wrap, e.g. a ``SlidingWindowInferer``.
        spatial_axes: spatial axes to flip (0 is the first spatial axis).

    ``__call__(inputs, network)``: ``[B, C, *spatial]`` -> the wrapped inferer's output shape.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        flips = [()] + [c for n in range(1, len(self.spatial_axes) + 1) for c in combinations(self.spatial_axes, n)]
        total = None
        for axes in flips:
            dims = [a + 2 for a in axes]
            x = torch.flip(inputs, dims) if dims else inputs
            out = self.inferer(x, network, *args, **kwargs)
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
        return total / len(flips)
