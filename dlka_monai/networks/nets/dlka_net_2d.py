# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""2D D-LKA Net (Azad et al., "Beyond Self-Attention: Deformable Large Kernel Attention for Medical
Image Segmentation", WACV 2024): a MaxViT encoder and a decoder of 2D D-LKA blocks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import timm
import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from torch import nn

from dlka_monai.networks.blocks.dlka_decoder_2d import DLKADecoderStage2D, PatchExpand2D, xavier_init_

__all__ = ["DLKANet2D"]


class DLKANet2D(nn.Module):
    """2D D-LKA Net: a timm MaxViT encoder (four stages at 1/4 .. 1/32 resolution, the last one
    layer-normed) and a decoder of 2D D-LKA blocks whose depthwise large-kernel convs are deformable.

    Decoder (``C0..C3`` the encoder's stage channels, 96/192/384/768 for MaxViT-S):
    the 1/32 features are patch-expanded to 1/16 (``bottleneck_up``); ``decoder2`` / ``decoder1`` add
    a linear map of them to the 1/16 / 1/8 skip, apply two D-LKA blocks and patch-expand ×2;
    ``decoder0`` does the same at 1/4 and patch-expands ×4 to full resolution; ``out`` is a 1×1 conv
    to the classes. Unlike the authors' network it holds only modules that run (their never-called
    first-stage ``x1_linear`` / ``layer_lka_1`` / ``layer_lka_2`` and 1 -> 3 channel conv are left out).

    MaxViT's window / grid attention fixes the input size: the network accepts exactly ``img_size``
    (use ``monai.inferers.sliding_window_inference`` with ``roi_size=img_size`` for larger images).

    Args:
        in_channels: input channels. A single channel is repeated to the encoder's 3 (as the authors
            do, so ImageNet weights apply unchanged); any other count is fed to a timm stem built for it.
        out_channels: number of classes (background included).
        img_size: input spatial size, an int or ``(H, W)``, each divisible by 32.
        encoder: name of a timm MaxViT / MaxxViT model (``maxvit_rmlp_small_rw_224`` in the paper);
            built with ``pretrained=False`` and no classifier, nothing is downloaded.
        pretrained_encoder: optional path of a local checkpoint holding the encoder's timm state dict
            (e.g. timm's ImageNet weights for ``encoder``); a classifier ``head.*`` in it is ignored,
            everything else must match exactly (see :meth:`load_encoder_weights`).

    ``forward``: ``[B, in_channels, *img_size]`` -> ``[B, out_channels, *img_size]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: int | Sequence[int] = 224,
        encoder: str = "maxvit_rmlp_small_rw_224",
        pretrained_encoder: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        size = (int(img_size),) * 2 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(size) != 2:
            raise ValueError(f"img_size needs 2 entries, got {img_size}.")
        if any(s % 32 for s in size):
            raise ValueError(f"img_size {size} must be divisible by 32 (the encoder's total downsampling).")
        self.img_size = size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self._repeat_input = in_channels == 1

        self.encoder = timm.create_model(
            encoder,
            pretrained=False,
            num_classes=0,
            global_pool="",
            img_size=size,
            in_chans=3 if self._repeat_input else in_channels,
        )
        if not all(hasattr(self.encoder, a) for a in ("stem", "stages", "norm")) or len(self.encoder.stages) != 4:
            raise ValueError(f"encoder {encoder!r} is not a four-stage timm MaxViT / MaxxViT model.")
        c0, c1, c2, c3 = (self.encoder.feature_info[i]["num_chs"] for i in range(1, 5))

        self.bottleneck_up = PatchExpand2D(c3, c2, scale=2)
        self.decoder2 = DLKADecoderStage2D(c2, c1, scale=2)
        self.decoder1 = DLKADecoderStage2D(c1, c0, scale=2)
        self.decoder0 = DLKADecoderStage2D(c0, c0, scale=4)
        self.out = xavier_init_(UnetOutBlock(2, c0, out_channels))

        if pretrained_encoder is not None:
            self.load_encoder_weights(pretrained_encoder)

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load the encoder's timm state dict from the local file ``path`` (``torch.load`` with
        ``weights_only=True``; a dict under ``"state_dict"`` or ``"model"`` is unwrapped). Keys of a
        classification head (``head.*``) are dropped; any other missing, unexpected or differently
        shaped key raises a ``ValueError`` that lists them."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
        if not isinstance(state, Mapping):
            raise ValueError(f"{os.fspath(path)!r} does not hold a state dict (got {type(state).__name__}).")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        own = self.encoder.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or mismatched:

            def _few(items: list[str]) -> str:
                return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")

            problems = [
                f"{name} ({_few(items)})"
                for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if items
            ]
            raise ValueError(
                f"encoder checkpoint {os.fspath(path)!r} does not match the encoder "
                f"{type(self.encoder).__name__} ({len(own)} keys): " + "; ".join(problems) + "."
            )
        self.encoder.load_state_dict(state, strict=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's four stage outputs ``[B, C_i, *img_size / 2**(i + 2)]``, the last one normed."""
        x = self.encoder.stem(x)
        feats = []
        for stage in self.encoder.stages:
            x = stage(x)
            feats.append(x)
        feats[-1] = self.encoder.norm(feats[-1])
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"DLKANet2D was built for img_size {self.img_size} but got an input of spatial size "
                f"{tuple(x.shape[2:])}; resize/crop the input or use sliding_window_inference with roi_size={self.img_size}."
            )
        if self._repeat_input:
            x = x.repeat(1, 3, 1, 1)
        enc0, enc1, enc2, enc3 = self.encode(x)
        y = self.bottleneck_up(enc3)
        y = self.decoder2(y, enc2)
        y = self.decoder1(y, enc1)
        y = self.decoder0(y, enc0)
        return self.out(y)
