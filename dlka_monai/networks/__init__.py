from .blocks import DeformableLKA3d, DLKABlock, DLKAEncoder, DLKAttention, DLKAUpBlock
from .layers import (
    DeformConv3d,
    DeformConv3dPack,
    FastDilatedDepthwiseConv3d,
    deform_conv3d,
    deform_conv3d_fast,
    dilated_depthwise_conv3d,
)
from .nets import DLKANet3D
from .presets import dlka3d_pancreas, dlka3d_synapse
from .registry import create_network, list_networks, register_network

__all__ = [
    "DeformConv3d",
    "DeformConv3dPack",
    "deform_conv3d",
    "deform_conv3d_fast",
    "dilated_depthwise_conv3d",
    "FastDilatedDepthwiseConv3d",
    "DeformableLKA3d",
    "DLKAttention",
    "DLKABlock",
    "DLKAEncoder",
    "DLKAUpBlock",
    "DLKANet3D",
    "create_network",
    "list_networks",
    "register_network",
    "dlka3d_synapse",
    "dlka3d_pancreas",
]
