# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The paper's models as registry presets."""

from __future__ import annotations

from dlka_monai.networks.nets.dlka_net_2d import DLKANet2D
from dlka_monai.networks.nets.dlka_net_3d import DLKANet3D
from dlka_monai.networks.registry import register_network

__all__ = ["dlka3d_synapse", "dlka3d_pancreas", "dlka2d_synapse"]


@register_network
def dlka3d_synapse(**overrides) -> DLKANet3D:
    """Synapse multi-organ CT: 14 classes, (z, y, x) patches of 64×128×128, deep supervision
    (42,353,327 parameters)."""
    kwargs = dict(in_channels=1, out_channels=14, img_size=(64, 128, 128), patch_size=(2, 4, 4), deep_supervision=True)
    return DLKANet3D(**{**kwargs, **overrides})


@register_network
def dlka3d_pancreas(**overrides) -> DLKANet3D:
    """NIH Pancreas CT: 2 classes, 96³ patches, no deep supervision (62,067,079 parameters)."""
    kwargs = dict(in_channels=1, out_channels=2, img_size=(96, 96, 96), patch_size=(2, 2, 2), deep_supervision=False)
    return DLKANet3D(**{**kwargs, **overrides})


@register_network
def dlka2d_synapse(**overrides) -> DLKANet2D:
    """Synapse multi-organ CT, 2D slices: 9 classes, 224×224 inputs, MaxViT-S encoder
    (78,583,005 parameters). Pass ``pretrained_encoder=PATH`` to start from local ImageNet weights."""
    kwargs = dict(in_channels=1, out_channels=9, img_size=224, encoder="maxvit_rmlp_small_rw_224")
    return DLKANet2D(**{**kwargs, **overrides})
