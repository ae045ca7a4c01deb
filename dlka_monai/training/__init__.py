from .checkpoints import latest_checkpoint
from .handlers import LrLogger
from .optim import build_optimizer

__all__ = ["build_optimizer", "latest_checkpoint", "LrLogger"]
