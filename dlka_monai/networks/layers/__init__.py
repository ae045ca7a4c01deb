from .deform_conv import deform_conv3d
from .deform_conv2d import deform_conv2d_depthwise
from .deform_conv_fast import FastDilatedDepthwiseConv3d, deform_conv3d_fast, dilated_depthwise_conv3d
from .deformable import DeformConv3d, DeformConv3dPack
from .channels_last import ChannelsLastConv3d, ChannelsLastInstanceNorm3d, keep_channels_last

__all__ = [
    "ChannelsLastConv3d",
    "ChannelsLastInstanceNorm3d",
    "deform_conv2d_depthwise",
    "deform_conv3d",
    "deform_conv3d_fast",
    "dilated_depthwise_conv3d",
    "DeformConv3d",
    "DeformConv3dPack",
    "FastDilatedDepthwiseConv3d",
    "keep_channels_last",
]
