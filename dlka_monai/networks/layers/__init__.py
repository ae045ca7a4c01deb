from .deform_conv import deform_conv3d
from .deform_conv2d_depthwise import deform_conv2d_depthwise
from .deform_conv_fast import FastDilatedDepthwiseConv3d, deform_conv3d_fast, dilated_depthwise_conv3d
from .deformable import DeformConv3d, DeformConv3dPack

__all__ = [
    "deform_conv2d_depthwise",
    "deform_conv3d",
    "deform_conv3d_fast",
    "dilated_depthwise_conv3d",
    "DeformConv3d",
    "DeformConv3dPack",
    "FastDilatedDepthwiseConv3d",
]
