# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Layers that keep a network channels-last at inference: an instance norm and a one-channel-input conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelsLastConv3d", "ChannelsLastInstanceNorm3d", "keep_channels_last"]


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same arguments, parameters and state-dict keys) whose forward keeps a
    ``channels_last_3d`` input in that layout on CPU without autograd.

    PyTorch's CPU instance norm copies a channels-last input back to the contiguous layout, so a
    channels-last network pays two copies per norm. Here the input is read as ``[B, N, C]`` rows: a
    per-channel pilot mean from a strided subsample is subtracted (so that the float32 sums below do
    not cancel), the mean and the variance of the rest come from two batched GEMMs (``1ᵀd`` and the
    diagonal of ``dᵀd``), and one ``addcmul`` normalises in place. The statistics are float32 for a
    bfloat16 / float16 input too (autocast off inside), the result in the input's dtype. Everything else (training, running
    statistics, contiguous input, autograd, other devices) runs ``nn.InstanceNorm3d.forward``.

    ``forward``: ``[B, C, D, H, W]`` -> ``[B, C, D, H, W]``, in the input's layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = (
            _inference_channels_last(x)
            and not (self.track_running_stats and not self.training)
            and x.is_contiguous(memory_format=torch.channels_last_3d)
            and not x.is_contiguous()
        )
        if not fast:
            return super().forward(x)
        batch, ch, *size = x.shape
        rows = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, ch)  # a view: the layout is channels-last
        n = rows.shape[1]
        # float32 statistics also for a bfloat16 / float16 input (as under autocast, which is off here so that
        # the GEMMs keep float32); the result returns in the input's dtype
        with torch.autocast("cpu", enabled=False):
            d = rows - rows[:, :: max(1, n // 4096)].float().mean(1, keepdim=True)
            mean = torch.bmm(d.new_full((batch, 1, n), 1.0 / n), d)  # [B, 1, C]
            var = torch.bmm(d.transpose(1, 2), d).diagonal(dim1=1, dim2=2).unsqueeze(1) / n - mean * mean
            scale = torch.rsqrt(var.clamp_min(0) + self.eps)
            shift = -mean * scale
            if self.affine:
                scale = scale * self.weight
                shift = shift * self.weight + self.bias
            torch.addcmul(shift, d, scale, out=d)
        return d.to(x.dtype).view(batch, *size, ch).permute(0, 4, 1, 2, 3)


def _inference_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and x.device.type == "cpu" and not torch.is_grad_enabled()


class ChannelsLastConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same arguments, parameters and state-dict keys) whose output is channels-last on CPU
    without autograd.

    Meant for convs that read a one-channel image: PyTorch treats such an input (and its weight) as
    contiguous, so oneDNN would answer in the contiguous layout and the whole network after it would
    run that way. oneDNN is also slow at one input channel (a 1 -> 16 1×1×1 conv at 4×64×128×128 took
    longer than a 16 -> 16 3³ one), so with one input channel the conv is computed another way: a
    1×1×1 kernel as one ``addcmul`` written channels-last, any other kernel as a depthwise conv of the
    input repeated over the output channels (the same sums; a 3³ kernel about 1.5x faster). Training
    and other devices run ``nn.Conv3d.forward`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not _inference_channels_last(x) or self.padding_mode != "zeros":
            return super().forward(x)
        if self.in_channels != 1 or self.groups != 1:
            return super().forward(x).contiguous(memory_format=torch.channels_last_3d)
        out = self.out_channels
        if self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and self.padding == (0, 0, 0):
            rows = x.permute(0, 2, 3, 4, 1)  # [B, D, H, W, 1]
            weight = self.weight.view(out).to(x.dtype)
            if self.bias is None:
                return (rows * weight).permute(0, 4, 1, 2, 3)
            return torch.addcmul(self.bias.to(x.dtype), rows, weight).permute(0, 4, 1, 2, 3)
        repeated = x.expand(-1, out, -1, -1, -1).contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(repeated, self.weight, self.bias, self.stride, self.padding, self.dilation, groups=out)


def keep_channels_last(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.InstanceNorm3d`` inside ``module`` by a
    :class:`ChannelsLastInstanceNorm3d` and every one-input-channel ``nn.Conv3d`` by a
    :class:`ChannelsLastConv3d`, with the same configuration and state; returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.InstanceNorm3d:
                new = ChannelsLastInstanceNorm3d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            elif type(child) is nn.Conv3d and child.in_channels == 1 and child.padding_mode == "zeros":
                new = ChannelsLastConv3d(
                    1, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation, child.groups,
                    child.bias is not None,
                )
            else:
                continue
            new.load_state_dict(child.state_dict())
            setattr(parent, name, new)
    return module
