# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The D-LKA block: a transformer-style block with D-LKA attention in place of self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from dlka_monai.networks.blocks.dlka_attention import DLKAttention

__all__ = ["DLKABlock"]


class DLKABlock(nn.Module):
    """Learned position embedding -> LayerNorm -> D-LKA attention (layer-scaled residual) ->
    residual conv block (UnetResBlock with batch norm) -> dropout + 1×1×1 conv (residual).

    The position embedding (zero-initialised, one vector per voxel) fixes the spatial size the block
    accepts: ``input_size``.

    Args:
        spatial_dims: number of spatial dimensions (3).
        channels: feature channels ``C``.
        input_size: the spatial size of the feature map, e.g. ``(32, 32, 32)``.
        dropout: channel dropout before the last 1×1×1 conv.
        layer_scale_init: initial value of the per-channel scale ``gamma`` of the attention branch.

    ``forward``: ``[B, C, *input_size]`` -> ``[B, C, *input_size]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        input_size: Sequence[int],
        dropout: float = 0.1,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout should be in [0, 1], got {dropout}.")
        self.input_size = tuple(int(s) for s in input_size)
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(channels))
        self.attn = DLKAttention(spatial_dims, channels)
        self.conv_block = UnetResBlock(spatial_dims, channels, channels, kernel_size=3, stride=1, norm_name="batch")
        self.proj = nn.Sequential(nn.Dropout3d(dropout), nn.Conv3d(channels, channels, kernel_size=1))
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.input_size), channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        if tuple(spatial) != self.input_size:
            raise ValueError(f"DLKABlock built for spatial size {self.input_size} got {tuple(spatial)}.")
        tokens = x.flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, C]
        normed = self.norm(tokens).transpose(1, 2).reshape(b, c, *spatial)
        attn = tokens.transpose(1, 2).reshape(b, c, *spatial) + self.gamma.view(1, c, *[1] * len(spatial)) * self.attn(normed)
        return attn + self.proj(self.conv_block(attn))
