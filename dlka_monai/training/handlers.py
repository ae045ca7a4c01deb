# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Small ignite handlers the bundle needs and MONAI does not ship."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

__all__ = ["LrLogger"]


class LrLogger:
    """Write the learning rate of each parameter group to TensorBoard once per epoch
    (MONAI's ``LrScheduleHandler`` only prints it).

    Args:
        optimizer: the optimizer whose ``lr`` is logged.
        log_dir: TensorBoard log folder (ignored when ``summary_writer`` is given).
        summary_writer: an existing writer to share.
        tag: scalar tag; groups after the first get ``_<i>`` appended.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        log_dir: str = "./runs",
        summary_writer: SummaryWriter | None = None,
        tag: str = "lr",
    ) -> None:
        self.optimizer = optimizer
        self.log_dir = log_dir
        self.writer = summary_writer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=self.log_dir)
        for i, group in enumerate(self.optimizer.param_groups):
            self.writer.add_scalar(self.tag if i == 0 else f"{self.tag}_{i}", group["lr"], engine.state.epoch)
        self.writer.flush()
