"""D-LKA Net (deformable large kernel attention) for medical image segmentation, on MONAI."""

__version__ = "0.1.0"
