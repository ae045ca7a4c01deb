from .metrics import CONVENTIONS, SYNAPSE_8_ORGANS, case_metrics, hd95_voxels, summarize
from .writer import MetricsWriter

__all__ = ["SYNAPSE_8_ORGANS", "CONVENTIONS", "case_metrics", "hd95_voxels", "summarize", "MetricsWriter"]
