from .folds import read_metrics, summarize_folds
from .metrics import SYNAPSE_8_ORGANS, case_metrics, summarize
from .postprocessing import decide_largest_component, keep_largest_component, largest_component_scores, largest_component_transform
from .writer import MetricsWriter

__all__ = [
    "SYNAPSE_8_ORGANS",
    "case_metrics",
    "summarize",
    "MetricsWriter",
    "read_metrics",
    "summarize_folds",
    "decide_largest_component",
    "keep_largest_component",
    "largest_component_scores",
    "largest_component_transform",
]
