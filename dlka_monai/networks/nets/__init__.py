from .dlka_net_2d import DLKANet2D
from .dlka_net_3d import DLKANet3D

__all__ = ["DLKANet2D", "DLKANet3D"]
