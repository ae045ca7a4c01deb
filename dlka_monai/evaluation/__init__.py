from .folds import read_metrics, summarize_folds
from .metrics import CONVENTIONS, SYNAPSE_8_ORGANS, case_metrics, hd95_voxels, summarize
from .postprocessing import decide_largest_component, keep_largest_component, largest_component_scores, largest_component_transform
from .writer import MetricsWriter

__all__ = [
    "SYNAPSE_8_ORGANS",
    "CONVENTIONS",
    "case_metrics",
    "hd95_voxels",
    "summarize",
    "MetricsWriter",
    "read_metrics",
    "summarize_folds",
    "decide_largest_component",
    "keep_largest_component",
    "largest_component_scores",
    "largest_component_transform",
]
