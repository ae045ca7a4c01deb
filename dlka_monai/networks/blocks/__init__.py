from .dlka_attention import DeformableDepthwiseConv2d, DeformableLKA, DLKAttention
from .dlka_block import DLKABlock
from .dlka_decoder_2d import DLKABlock2D, DLKADecoderStage2D, DLKAMlp2D, PatchExpand2D
from .dlka_stages import DLKAEncoder, DLKAUpBlock

__all__ = [
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
]
