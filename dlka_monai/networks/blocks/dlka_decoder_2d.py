# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Decoder of the 2D D-LKA Net: D-LKA blocks (VAN-style, with the 2D deformable D-LKA attention) and
patch-expanding upsamplers, in the layout of the authors' MaxViT D-LKA decoder.

All modules here work on ``[B, C, H, W]`` tensors; the LayerNorms normalise over channels. Their
``nn.Linear`` and ``nn.Conv2d`` weights are xavier-uniform initialised with zero biases (LayerNorms
ones / zeros), as the authors' decoder layers are; the depthwise deformable convs keep torchvision's
initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from dlka_monai.networks.blocks.dlka_attention import DLKAttention

__all__ = ["xavier_init_", "DLKAMlp2D", "DLKABlock2D", "PatchExpand2D", "DLKADecoderStage2D"]


def xavier_init_(module: nn.Module) -> nn.Module:
    """xavier-uniform weights and zero biases for every ``nn.Linear`` / ``nn.Conv2d`` in ``module``,
    ones / zeros for every ``nn.LayerNorm``; returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of ``[B, C, H, W]``."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DLKAMlp2D(nn.Module):
    """1×1 conv ``C -> hidden``, 3×3 depthwise conv, GELU, 1×1 conv ``hidden -> C``.

    ``forward``: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, hidden_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1, groups=hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class DLKABlock2D(nn.Module):
    """2D D-LKA block: ``x + gamma1 * DLKAttention(LN(x))``, then ``x + gamma2 * MLP(LN(x))``
    (LayerNorms over channels, per-channel layer scales initialised to ``layer_scale_init``).

    Args:
        channels: feature channels ``C``.
        mlp_ratio: hidden channels of the MLP, as a multiple of ``C``.
        dropout: dropout inside the MLP.
        layer_scale_init: initial value of ``gamma1`` and ``gamma2``.

    ``forward``: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, dropout: float = 0.0, layer_scale_init: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = DLKAttention(2, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = DLKAMlp2D(channels, int(channels * mlp_ratio), dropout)
        self.gamma1 = nn.Parameter(layer_scale_init * torch.ones(channels))
        self.gamma2 = nn.Parameter(layer_scale_init * torch.ones(channels))
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1.view(1, -1, 1, 1) * self.attn(_channel_norm(self.norm1, x))
        return x + self.gamma2.view(1, -1, 1, 1) * self.mlp(_channel_norm(self.norm2, x))


class PatchExpand2D(nn.Module):
    """Upsampling by ``scale`` with a linear expansion: ``Linear(in, scale²·out, bias=False)`` per pixel,
    each output vector split into a ``scale × scale`` patch of ``out`` channels (the vector is read as
    ``(row, col, channel)``, as ``einops``' ``"(p1 p2 c)"``), then LayerNorm over channels.

    ``forward``: ``[B, in, H, W]`` -> ``[B, out, scale·H, scale·W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = int(scale)
        self.out_channels = out_channels
        self.expand = nn.Linear(in_channels, self.scale**2 * out_channels, bias=False)
        self.norm = nn.LayerNorm(out_channels)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, c = self.scale, self.out_channels
        x = self.expand(x.permute(0, 2, 3, 1))  # [B, H, W, s*s*c]
        x = x.reshape(b, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)
        return self.norm(x).permute(0, 3, 1, 2)


class DLKADecoderStage2D(nn.Module):
    """Decoder stage: the upsampled coarser features go through a per-pixel linear map ``in_proj`` and
    are added to the encoder skip, then ``depth`` :class:`DLKABlock2D` and a :class:`PatchExpand2D`
    to the next (finer) stage.

    Args:
        channels: channels ``C`` of the input and of the skip.
        out_channels: channels after upsampling.
        scale: upsampling factor of the final patch expansion.
        depth: number of D-LKA blocks.

    ``forward(x, skip)``: ``x, skip: [B, C, H, W]`` -> ``[B, out_channels, scale·H, scale·W]``.
    """

    def __init__(self, channels: int, out_channels: int, scale: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.in_proj = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList([DLKABlock2D(channels) for _ in range(depth)])
        self.upsample = PatchExpand2D(channels, out_channels, scale)
        xavier_init_(self.in_proj)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if x.shape != skip.shape:
            raise ValueError(f"decoder input {tuple(x.shape)} and skip {tuple(skip.shape)} differ in shape.")
        x = self.in_proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + skip
        for block in self.blocks:
            x = block(x)
        return self.upsample(x)
