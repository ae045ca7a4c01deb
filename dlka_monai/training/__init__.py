from .checkpoints import TrainingCheckpointer, latest_checkpoint
from .class_dice import PerClassDice
from .distributed import EVERY_RANK_HANDLERS, rank_zero_handlers
from .handlers import LrLogger, NonFiniteLossGuard
from .optim import build_optimizer
from .overlay import ValidationOverlay
from .plot import ProgressPlot, plot_progress
from .progress import TrainingLog, load_history

__all__ = [
    "build_optimizer",
    "latest_checkpoint",
    "TrainingCheckpointer",
    "LrLogger",
    "NonFiniteLossGuard",
    "EVERY_RANK_HANDLERS",
    "rank_zero_handlers",
    "PerClassDice",
    "TrainingLog",
    "load_history",
    "ProgressPlot",
    "plot_progress",
    "ValidationOverlay",
]
