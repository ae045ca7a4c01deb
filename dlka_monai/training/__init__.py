from .checkpoints import TrainingCheckpointer, latest_checkpoint
from .distributed import EVERY_RANK_HANDLERS, rank_zero_handlers
from .handlers import LrLogger, NonFiniteLossGuard
from .optim import build_optimizer

__all__ = [
    "build_optimizer",
    "latest_checkpoint",
    "TrainingCheckpointer",
    "LrLogger",
    "NonFiniteLossGuard",
    "EVERY_RANK_HANDLERS",
    "rank_zero_handlers",
]
