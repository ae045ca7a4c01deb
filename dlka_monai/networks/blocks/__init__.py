from .dlka_attention import DeformableLKA3d, DLKAttention
from .dlka_block import DLKABlock
from .dlka_stages import DLKAEncoder, DLKAUpBlock

__all__ = ["DeformableLKA3d", "DLKAttention", "DLKABlock", "DLKAEncoder", "DLKAUpBlock"]
