from .deform_conv import DeformConv3d, DeformConv3dPack, deform_conv3d

__all__ = ["DeformConv3d", "DeformConv3dPack", "deform_conv3d"]
