from .blocks import (
    DeformableDepthwiseConv2d,
    DeformableLKA,
    DLKABlock,
    DLKABlock2D,
    DLKADecoderStage2D,
    DLKAEncoder,
    DLKAMlp2D,
    DLKAttention,
    DLKAUpBlock,
    PatchExpand2D,
)
from .layers import (
    DeformConv3d,
    DeformConv3dPack,
    FastDilatedDepthwiseConv3d,
    deform_conv3d,
    deform_conv3d_fast,
    dilated_depthwise_conv3d,
)
from .nets import DLKANet2D, DLKANet3D
from .presets import dlka2d_synapse, dlka3d_pancreas, dlka3d_synapse
from .registry import create_network, list_networks, register_network

__all__ = [
    "DeformConv3d",
    "DeformConv3dPack",
    "deform_conv3d",
    "deform_conv3d_fast",
    "dilated_depthwise_conv3d",
    "FastDilatedDepthwiseConv3d",
    "DeformableDepthwiseConv2d",
    "DeformableLKA",
    "DLKAttention",
    "DLKABlock",
    "DLKABlock2D",
    "DLKADecoderStage2D",
    "DLKAMlp2D",
    "PatchExpand2D",
    "DLKAEncoder",
    "DLKAUpBlock",
    "DLKANet2D",
    "DLKANet3D",
    "create_network",
    "list_networks",
    "register_network",
    "dlka3d_synapse",
    "dlka3d_pancreas",
    "dlka2d_synapse",
]
