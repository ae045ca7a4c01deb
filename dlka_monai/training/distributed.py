# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""What multi-process (DDP) training runs on every rank and what on rank 0 alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import LrScheduleHandler, ValidationHandler

from dlka_monai.training.checkpoints import TrainingCheckpointer
from dlka_monai.training.handlers import GradientClipping, NonFiniteLossGuard

__all__ = ["EVERY_RANK_HANDLERS", "rank_zero_handlers"]

EVERY_RANK_HANDLERS = (LrScheduleHandler, ValidationHandler, TrainingCheckpointer, NonFiniteLossGuard, GradientClipping)
"""Handlers every rank needs: the learning rate and the validation must advance in step, every rank loads
a resumed checkpoint (rank 0 alone writes), all must stop on the same non-finite step, and every rank clips
its gradients."""


def rank_zero_handlers(handlers: Sequence[Any], rank: int) -> list[Any]:
    """All ``handlers`` on rank 0; on the other ranks only those of :data:`EVERY_RANK_HANDLERS` (no duplicate
    logs, TensorBoard files or progress bars)."""
    return list(handlers) if rank == 0 else [h for h in handlers if isinstance(h, EVERY_RANK_HANDLERS)]
