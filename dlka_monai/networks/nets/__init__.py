from .dlka_net_3d import DLKANet3D

__all__ = ["DLKANet3D"]
