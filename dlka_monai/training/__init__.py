from .checkpoints import TrainingCheckpointer, latest_checkpoint
from .handlers import LrLogger, NonFiniteLossGuard
from .optim import build_optimizer

__all__ = ["build_optimizer", "latest_checkpoint", "TrainingCheckpointer", "LrLogger", "NonFiniteLossGuard"]
