# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""3D deformable convolution modules (``torchvision.ops.DeformConv2d``-like)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.utils import _triple

from dlka_monai.networks.layers.deform_conv import deform_conv3d
from dlka_monai.networks.layers.deform_conv_fast import deform_conv3d_fast

__all__ = ["DeformConv3d", "DeformConv3dPack"]


class DeformConv3d(nn.Module):
    """3D deformable convolution module, ``forward(x, offset)`` like ``torchvision.ops.DeformConv2d``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size, stride, padding, dilation: int or 3 ints.
        groups: channel groups.
        bias: learn an additive bias.
        fast: compute with :func:`deform_conv3d_fast` (recomputes the sampling in backward instead of
            storing it; float32/float64, groups=1), else with the reference :func:`deform_conv3d`.
            Both give the same result; the fast path falls back to the reference where it cannot run.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.dilation = _triple(dilation)
        self.groups = groups
        self.fast = fast
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same initialisation as nn.Conv3d
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``[B, C_in, D, H, W]``.
            offset: ``[B, 3 * kd * kh * kw, D', H', W']``.

        Returns:
            ``[B, C_out, D', H', W']``.
        """
        # a traced graph cannot hold the fast path's Python autograd function: trace the reference ops
        fn = deform_conv3d_fast if self.fast and not torch.jit.is_tracing() else deform_conv3d
        return fn(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
            f"fast={self.fast}"
        )


class DeformConv3dPack(DeformConv3d):
    """:class:`DeformConv3d` that predicts its own offsets with a zero-initialised ``conv_offset``
    (same kernel, stride and padding), so it starts out as a plain convolution.

    ``forward(x)``: ``[B, C_in, D, H, W]`` -> ``[B, C_out, D', H', W']``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv3d(
            self.in_channels,
            3 * math.prod(self.kernel_size),
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))
