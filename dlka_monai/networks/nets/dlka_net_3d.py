# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""3D D-LKA Net (Azad et al., "Beyond Self-Attention: Deformable Large Kernel Attention for Medical
Image Segmentation", WACV 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from torch import nn

from dlka_monai.networks.blocks.dlka_stages import DLKAEncoder, DLKAUpBlock
from dlka_monai.networks.layers.channels_last import keep_channels_last

__all__ = ["DLKANet3D"]


class DLKANet3D(nn.Module):
    """3D D-LKA Net: a hierarchical encoder of D-LKA blocks, a full-resolution conv stem, and a decoder
    of D-LKA stages with skip connections (the UNETR++ layout with D-LKA attention).

    Every D-LKA block has a learned position embedding, so the network accepts exactly ``img_size``;
    use it with ``monai.inferers.sliding_window_inference`` and ``roi_size=img_size`` for whole volumes.
    The spatial axes are in the order of ``img_size``: the paper's Synapse model uses
    ``(64, 128, 128)`` = (z, y, x) with ``patch_size=(2, 4, 4)``, so z is the coarse slice axis.

    Args:
        in_channels: input channels.
        out_channels: number of classes (background included).
        img_size: input spatial size; each entry divisible by ``patch_size * 8``.
        patch_size: kernel and stride of the patch embedding; its product with 8 is the total
            downsampling of the encoder.
        feature_size: channels of the full-resolution conv stem; the stages have
            ``2, 4, 8, 16`` times as many.
        depths: D-LKA blocks per encoder stage (the decoder uses the same, reversed).
        norm_name: normalisation of the conv stem and the full-resolution decoder.
        dropout: channel dropout inside the D-LKA blocks.
        deep_supervision: in training mode, also return the logits of the two coarser decoder stages.

    ``forward``: ``[B, in_channels, *img_size]`` -> ``[B, out_channels, *img_size]``; in training mode
    with ``deep_supervision`` a list of that tensor followed by ``[B, out_channels, *img_size / (patch_size * 2**i)]``,
    ``i = 0, 1``. On CPU without autograd (inference) the network runs channels-last, where oneDNN's
    dense convs of the full-resolution stem and decoder are up to 2x faster
    (:func:`~dlka_monai.networks.layers.keep_channels_last`): the same result to float rounding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int] = (2, 4, 4),
        feature_size: int = 16,
        depths: Sequence[int] = (3, 3, 3, 3),
        norm_name: str | tuple = "instance",
        dropout: float = 0.1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        spatial_dims = 3
        if len(img_size) != spatial_dims or len(patch_size) != spatial_dims:
            raise ValueError(f"img_size and patch_size need {spatial_dims} entries, got {img_size} and {patch_size}.")
        if len(depths) != 4:
            raise ValueError(f"depths needs 4 entries (one per stage), got {depths}.")
        for s, p in zip(img_size, patch_size):
            if s % (p * 8):
                raise ValueError(f"img_size {tuple(img_size)} must be divisible by patch_size * 8 = {tuple(q * 8 for q in patch_size)}.")
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision

        channels = [feature_size * 2**i for i in range(1, 5)]
        sizes = [tuple(s // p // 2**i for s, p in zip(self.img_size, self.patch_size)) for i in range(4)]
        self.encoder = DLKAEncoder(spatial_dims, in_channels, self.img_size, self.patch_size, channels, depths, dropout)
        self.encoder1 = UnetResBlock(spatial_dims, in_channels, feature_size, kernel_size=3, stride=1, norm_name=norm_name)
        self.decoder5 = DLKAUpBlock(spatial_dims, channels[3], channels[2], sizes[2], 2, depths[2], dropout=dropout)
        self.decoder4 = DLKAUpBlock(spatial_dims, channels[2], channels[1], sizes[1], 2, depths[1], dropout=dropout)
        self.decoder3 = DLKAUpBlock(spatial_dims, channels[1], channels[0], sizes[0], 2, depths[0], dropout=dropout)
        self.decoder2 = DLKAUpBlock(
            spatial_dims, channels[0], feature_size, self.img_size, self.patch_size, conv_decoder=True, norm_name=norm_name
        )
        self.out1 = UnetOutBlock(spatial_dims, feature_size, out_channels)
        if deep_supervision:
            self.out2 = UnetOutBlock(spatial_dims, channels[0], out_channels)
            self.out3 = UnetOutBlock(spatial_dims, channels[1], out_channels)
        # one-channel convs start the channels-last layout at inference, the instance norms keep it
        keep_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"DLKANet3D was built for img_size {self.img_size} but got an input of spatial size "
                f"{tuple(x.shape[2:])}; crop/pad the input or use sliding_window_inference with roi_size={self.img_size}."
            )
        enc1, enc2, enc3, enc4 = self.encoder(x)
        dec3 = self.decoder5(enc4, enc3)
        dec2 = self.decoder4(dec3, enc2)
        dec1 = self.decoder3(dec2, enc1)
        out = self.decoder2(dec1, self.encoder1(x))
        logits = self.out1(out)
        if self.deep_supervision and self.training:
            return [logits, self.out2(dec1), self.out3(dec2)]
        return logits
