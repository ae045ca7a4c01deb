# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The paper's models as registry presets, each with the facts needed to use it on images (written once:
the configs, the command line, the packer and the plans of trained models read them from here)."""

from __future__ import annotations

from dlka_monai.networks.nets.dlka_net_2d import DLKANet2D
from dlka_monai.networks.nets.dlka_net_3d import DLKANet3D
from dlka_monai.networks.registry import Preset, register_preset

__all__ = [
    "BTCV_CLASS_NAMES",
    "SYNAPSE_8_CLASS_NAMES",
    "SYNAPSE_CT_NORMALIZATION",
    "SYNAPSE_2D_NORMALIZATION",
    "dlka3d_synapse",
    "dlka3d_pancreas",
    "dlka2d_synapse",
    "dlka2d_skin",
]

BTCV_CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
"""Label values and names of the Synapse / BTCV multi-organ dataset."""

SYNAPSE_8_CLASS_NAMES: dict[int, str] = dict(
    enumerate(BTCV_CLASS_NAMES[v] for v in (0, 1, 2, 3, 4, 6, 7, 8, 11))
)
"""The 8 organs of the standard Synapse benchmark plus background, numbered 0-8 (the 2D model's classes)."""

SYNAPSE_CT_NORMALIZATION = {"scheme": "ct", "clip": [-958.0, 326.0], "mean": 82.95, "std": 136.95}
"""nnU-Net's CT normalisation of the authors' 3D Synapse model: clipped to the 0.5 / 99.5 percentiles of the
training foreground, z-scored with its mean and std (the values of nnFormer's Task002_Synapse plans)."""

SYNAPSE_2D_NORMALIZATION = {"scheme": "window", "a_min": -125.0, "a_max": 275.0, "b_min": -1.0, "b_max": 1.0}
"""The authors' 2D Synapse input: TransUNet's slices (HU clipped to [-125, 275], scaled to [0, 1]), then
(x - 0.5) / 0.5, i.e. [-125, 275] mapped to [-1, 1]."""

dlka3d_synapse = register_preset(
    Preset(
        name="dlka3d_synapse",
        network=DLKANet3D,
        args=dict(in_channels=1, out_channels=14, img_size=(64, 128, 128), patch_size=(2, 4, 4), deep_supervision=True),
        spatial_dims=3,
        modality="CT",
        axcodes="SAR",
        pixdim=(3.0, 0.758, 0.758),
        normalization=SYNAPSE_CT_NORMALIZATION,
        class_names=BTCV_CLASS_NAMES,
        description="Synapse multi-organ CT: 13 organs plus background, (z, y, x) patches of 64×128×128, "
        "deep supervision (42,353,327 parameters)",
    )
)

dlka3d_pancreas = register_preset(
    Preset(
        name="dlka3d_pancreas",
        network=DLKANet3D,
        args=dict(in_channels=1, out_channels=2, img_size=(96, 96, 96), patch_size=(2, 2, 2), deep_supervision=False),
        spatial_dims=3,
        modality="CT",
        axcodes="SAR",
        pixdim=(1.0, 1.0, 1.0),
        normalization={"scheme": "window", "a_min": -100.0, "a_max": 240.0},
        class_names={0: "background", 1: "pancreas"},
        description="NIH Pancreas CT: pancreas plus background, 96³ patches (62,067,079 parameters)",
    )
)

dlka2d_synapse = register_preset(
    Preset(
        name="dlka2d_synapse",
        network=DLKANet2D,
        args=dict(in_channels=1, out_channels=9, img_size=224, encoder="maxvit_rmlp_small_rw_224"),
        spatial_dims=2,
        modality="CT",
        axcodes="SAR",
        # axial slices: the slice spacing is kept, the plane resampled
        pixdim=(-1.0, 0.76, 0.76),
        normalization=SYNAPSE_2D_NORMALIZATION,
        class_names=SYNAPSE_8_CLASS_NAMES,
        description="Synapse multi-organ CT, 2D slices: 8 organs plus background, 224×224 inputs, MaxViT-S "
        "encoder (78,583,005 parameters); pass pretrained_encoder=PATH to start from local ImageNet weights",
        init_only=("pretrained_encoder",),
    )
)

dlka2d_skin = register_preset(
    Preset(
        name="dlka2d_skin",
        network=DLKANet2D,
        # two classes with softmax rather than the authors' one sigmoid channel: the same model (a softmax over
        # two logits is the sigmoid of their difference, so cross-entropy is their BCE), and it fits the plans,
        # the argmax post-processing and the Dice metrics of the other presets
        args=dict(in_channels=3, out_channels=2, img_size=224, encoder="maxvit_rmlp_small_rw_224"),
        spatial_dims=2,
        modality="RGB",
        # photographs: no orientation, no physical spacing; images are resized to img_size instead
        axcodes=None,
        pixdim=None,
        # the authors' input: each image min-max stretched to 0..255 (their dataset z-score followed by a
        # per-image min-max is that stretch)
        normalization={"scheme": "minmax", "b_min": 0.0, "b_max": 255.0},
        class_names={0: "background", 1: "lesion"},
        description="Skin lesions in dermoscopic RGB photographs (ISIC 2017, ISIC 2018, PH2): lesion plus "
        "background, 224×224 inputs, MaxViT-S encoder (78,582,326 parameters); pass pretrained_encoder=PATH to "
        "start from local ImageNet weights",
        init_only=("pretrained_encoder",),
    )
)
