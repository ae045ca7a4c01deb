# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Encoder and decoder stages of the 3D D-LKA Net (the UNETR++ hierarchy with D-LKA blocks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from dlka_monai.networks.blocks.dlka_block import DLKABlock

__all__ = ["DLKAEncoder", "DLKAUpBlock"]


def _scaled(size: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    return tuple(s // f for s, f in zip(size, factor))


class DLKAEncoder(nn.Module):
    """Hierarchical encoder: a patch-embedding conv then three 2× downsampling convs (each followed by
    group norm), with a stage of D-LKA blocks after each.

    Args:
        spatial_dims: 3.
        in_channels: input channels.
        img_size: input spatial size; each entry divisible by ``patch_size * 8``.
        patch_size: kernel and stride of the patch embedding, e.g. ``(2, 4, 4)``.
        feature_channels: channels of the four stages, e.g. ``(32, 64, 128, 256)``.
        depths: D-LKA blocks per stage.
        dropout: channel dropout inside the D-LKA blocks.

    ``forward``: ``[B, in_channels, *img_size]`` -> the four stage outputs, ``[B, C_i, *img_size / (patch_size * 2**i)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        feature_channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (3, 3, 3, 3),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        size = _scaled(img_size, patch_size)
        in_ch = in_channels
        for i, (channels, depth) in enumerate(zip(feature_channels, depths)):
            kernel = tuple(patch_size) if i == 0 else (2,) * spatial_dims
            if i > 0:
                size = _scaled(size, kernel)
            self.downsample_layers.append(
                nn.Sequential(
                    get_conv_layer(spatial_dims, in_ch, channels, kernel_size=kernel, stride=kernel, conv_only=True),
                    get_norm_layer(name=("group", {"num_groups": in_ch}), spatial_dims=spatial_dims, channels=channels),
                )
            )
            self.stages.append(nn.Sequential(*[DLKABlock(spatial_dims, channels, size, dropout) for _ in range(depth)]))
            in_ch = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        hidden_states = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            hidden_states.append(x)
        return hidden_states


class DLKAUpBlock(nn.Module):
    """Decoder stage: transposed-conv upsampling, addition of the encoder skip, then either a stage of
    D-LKA blocks or (at full resolution, where a position embedding would be too large) a residual
    conv block.

    Args:
        spatial_dims: 3.
        in_channels: channels of the coarser input.
        out_channels: channels of the skip and of the output.
        out_size: spatial size of the output.
        upsample_kernel_size: kernel and stride of the transposed conv.
        depth: D-LKA blocks (ignored when ``conv_decoder``).
        conv_decoder: use a ``UnetResBlock`` instead of D-LKA blocks.
        norm_name: normalisation of the conv decoder.
        dropout: channel dropout inside the D-LKA blocks.

    ``forward(x, skip)``: ``[B, in_channels, *out_size / upsample]``, ``[B, out_channels, *out_size]``
    -> ``[B, out_channels, *out_size]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        out_size: Sequence[int],
        upsample_kernel_size: int | Sequence[int] = 2,
        depth: int = 3,
        conv_decoder: bool = False,
        norm_name: str | tuple = "instance",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.transp_conv = get_conv_layer(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=upsample_kernel_size,
            stride=upsample_kernel_size,
            conv_only=True,
            is_transposed=True,
        )
        if conv_decoder:
            self.blocks: nn.Module = UnetResBlock(
                spatial_dims, out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name
            )
        else:
            self.blocks = nn.Sequential(
                *[DLKABlock(spatial_dims, out_channels, out_size, dropout) for _ in range(depth)]
            )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.transp_conv(x) + skip)
