# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Deformable large kernel attention (D-LKA), Azad et al., WACV 2024."""

from __future__ import annotations

import torch
from torch import nn

from dlka_monai.networks.layers import DeformConv3dPack, FastDilatedDepthwiseConv3d

__all__ = ["DeformableLKA3d", "DLKAttention"]


class DeformableLKA3d(nn.Module):
    """The 3D D-LKA gating unit: depthwise 5³ -> depthwise 7³ dilation 3 -> dense deformable 3³ ->
    1×1×1 conv, multiplied with the input. The two depthwise convs give a 23³ receptive field at the
    cost of small kernels; the deformable conv lets it follow organ shapes.

    Args:
        channels: feature channels ``C``.

    ``forward``: ``[B, C, D, H, W]`` -> ``[B, C, D, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv3d(channels, channels, kernel_size=5, padding=2, groups=channels)
        self.conv_spatial = FastDilatedDepthwiseConv3d(channels, channels, kernel_size=7, padding=9, dilation=3, groups=channels)
        self.deform_conv = DeformConv3dPack(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        attn = self.conv_spatial(attn)
        attn = self.deform_conv(attn)
        attn = self.conv1(attn)
        return x * attn


class DLKAttention(nn.Module):
    """D-LKA attention: 1×1 projection, GELU, the deformable LKA gating unit, 1×1 projection, plus a
    residual connection.

    Args:
        spatial_dims: 3 (2D is built by the 2D network).
        channels: feature channels ``C``.

    ``forward``: ``[B, C, *spatial]`` -> ``[B, C, *spatial]``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"DLKAttention supports spatial_dims=3, got {spatial_dims}.")
        self.proj_1 = nn.Conv3d(channels, channels, kernel_size=1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = DeformableLKA3d(channels)
        self.proj_2 = nn.Conv3d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_1(x)
        y = self.activation(y)
        y = self.spatial_gating_unit(y)
        y = self.proj_2(y)
        return x + y
