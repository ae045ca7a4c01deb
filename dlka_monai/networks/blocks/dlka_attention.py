# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Deformable large kernel attention (D-LKA), Azad et al., WACV 2024.

One implementation for both networks, parameterised by ``spatial_dims``:

* 3D (D-LKA Former): depthwise 5³ -> depthwise 7³ dilation 3 -> *dense* deformable 3³ -> 1×1×1 conv.
* 2D (D-LKA Net): the two depthwise large-kernel convs are themselves deformable
  (:class:`DeformableDepthwiseConv2d`) -> 1×1 conv.

Both gate the input multiplicatively; :class:`DLKAttention` wraps the gating unit in 1×1 projections,
a GELU and a residual connection.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn
from torchvision.ops import DeformConv2d

from dlka_monai.networks.layers import DeformConv3dPack, FastDilatedDepthwiseConv3d, deform_conv2d_depthwise

__all__ = ["DeformableDepthwiseConv2d", "DeformableLKA", "DLKAttention"]


class DeformableDepthwiseConv2d(nn.Module):
    """Depthwise deformable 2D conv whose offsets come from a dense conv over the input.

    ``offset_net`` is a ``C -> 2·k²`` conv with the same kernel size, padding, stride and dilation as the
    deformable conv (so its output has the deformable conv's output size), xavier-uniform initialised
    with zero bias, as in the authors' 2D D-LKA decoder. ``deform_conv`` is
    :class:`torchvision.ops.DeformConv2d` with ``groups=C`` (one ``k×k`` filter per channel), no bias
    and no modulation mask: it holds the weight (the authors' state-dict keys), while ``forward`` runs
    :func:`~dlka_monai.networks.layers.deform_conv2d_depthwise` with it (the same op, with fast
    kernels: numba on CPU, Triton on CUDA), and torchvision's op itself under ``torch.jit.trace``.

    Args:
        channels: input = output channels ``C``.
        kernel_size: ``k``.
        padding: zero padding of both convs.
        dilation: dilation of both convs.
        stride: stride of both convs.

    ``forward``: ``[B, C, H, W]`` -> ``[B, C, H', W']`` (``H' = H`` for "same" padding).
    """

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.offset_net = nn.Conv2d(
            channels, 2 * kernel_size * kernel_size, kernel_size, stride=stride, padding=padding, dilation=dilation
        )
        self.deform_conv = DeformConv2d(
            channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=channels, bias=False
        )
        nn.init.xavier_uniform_(self.offset_net.weight)
        nn.init.zeros_(self.offset_net.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_net(x)
        dc = self.deform_conv
        # a traced graph cannot hold the kernel's Python autograd function: trace torchvision's op
        if torch.jit.is_tracing():
            return dc(x, offset)
        return deform_conv2d_depthwise(x, offset, dc.weight, dc.bias, dc.stride, dc.padding, dc.dilation)


class DeformableLKA(nn.Module):
    """The D-LKA gating unit: a 5×5 depthwise conv, a 7×7 depthwise conv with dilation 3 (together a
    23-wide receptive field from small kernels) and a 1×1 conv, multiplied with the input.

    * ``spatial_dims=3``: ``conv0`` and ``conv_spatial`` are plain depthwise convs
      (``conv_spatial`` the fast :class:`FastDilatedDepthwiseConv3d`), followed by a dense 3³
      deformable conv ``deform_conv`` (:class:`DeformConv3dPack`).
    * ``spatial_dims=2``: ``conv0`` and ``conv_spatial`` are :class:`DeformableDepthwiseConv2d`
      (each with its own ``offset_net``); there is no separate deformable conv (``deform_conv`` is
      the identity and holds no parameters).

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels ``C``.

    ``forward``: ``[B, C, *spatial]`` -> ``[B, C, *spatial]``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"D-LKA supports spatial_dims 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        conv = Conv[Conv.CONV, spatial_dims]
        self.deform_conv: nn.Module
        if spatial_dims == 3:
            self.conv0 = conv(channels, channels, kernel_size=5, padding=2, groups=channels)
            self.conv_spatial = FastDilatedDepthwiseConv3d(channels, channels, kernel_size=7, padding=9, dilation=3, groups=channels)
            self.deform_conv = DeformConv3dPack(channels, channels, kernel_size=3, padding=1)
        else:
            self.conv0 = DeformableDepthwiseConv2d(channels, kernel_size=5, padding=2)
            self.conv_spatial = DeformableDepthwiseConv2d(channels, kernel_size=7, padding=9, dilation=3)
            self.deform_conv = nn.Identity()
        self.conv1 = conv(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        attn = self.conv_spatial(attn)
        attn = self.deform_conv(attn)
        attn = self.conv1(attn)
        return x * attn


class DLKAttention(nn.Module):
    """D-LKA attention: 1×1 projection, GELU, the deformable LKA gating unit
    (:class:`DeformableLKA`), 1×1 projection, plus a residual connection.

    Args:
        spatial_dims: 2 (D-LKA Net: deformable depthwise convs) or 3 (D-LKA Former: dense
            deformable conv after the depthwise convs).
        channels: feature channels ``C``.

    ``forward``: ``[B, C, *spatial]`` -> ``[B, C, *spatial]``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DLKAttention supports spatial_dims 2 or 3, got {spatial_dims}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.proj_1 = conv(channels, channels, kernel_size=1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = DeformableLKA(spatial_dims, channels)
        self.proj_2 = conv(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_1(x)
        y = self.activation(y)
        y = self.spatial_gating_unit(y)
        y = self.proj_2(y)
        return x + y
