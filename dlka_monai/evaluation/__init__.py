from .metrics import SYNAPSE_8_ORGANS, case_metrics, summarize
from .writer import MetricsWriter

__all__ = ["SYNAPSE_8_ORGANS", "case_metrics", "summarize", "MetricsWriter"]
