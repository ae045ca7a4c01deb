from .checkpoints import (
    TrainingCheckpointer,
    atomic_save,
    check_checkpoint,
    check_state_dict,
    latest_checkpoint,
    safe_load,
)
from .handlers import LrLogger, NonFiniteLossGuard
from .optim import build_optimizer

__all__ = [
    "build_optimizer",
    "atomic_save",
    "safe_load",
    "latest_checkpoint",
    "check_checkpoint",
    "check_state_dict",
    "TrainingCheckpointer",
    "LrLogger",
    "NonFiniteLossGuard",
]
