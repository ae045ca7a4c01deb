# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Small ignite handlers the bundle needs and MONAI does not ship."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.utils.tensorboard import SummaryWriter

__all__ = ["LrLogger", "NonFiniteLossGuard", "GradientClipping"]


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


class NonFiniteLossGuard:
    """Stop training, or skip the optimizer step, when the loss or a gradient is NaN or infinite.

    It runs between ``backward`` and the optimizer step of a MONAI ``SupervisedTrainer``. Gradients are
    checked too because under ``DistributedDataParallel`` they are the same on every rank while the loss is
    not, so all ranks take the same decision. With AMP the gradients are scaled and the ``GradScaler`` itself
    skips steps with non-finite gradients, so only the loss is checked.

    Args:
        action: ``"stop"``: raise ``FloatingPointError`` naming the epoch and iteration; nothing more is
            saved, so the last checkpoint is the last good state. ``"skip"``: drop this step's gradients
            (the optimizer leaves parameters without gradients untouched, momentum included) and go on.
        max_skips: with ``"skip"``, stop after this many non-finite steps in a row.
    """

    def __init__(self, action: str = "stop", max_skips: int = 20) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}.")
        self.action = action
        self.max_skips = max_skips
        self.skipped = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[Keys.LOSS].detach()
        finite = bool(torch.isfinite(loss).all())
        if finite and getattr(engine, "scaler_", None) is None:
            grads = [p.grad for p in engine.network.parameters() if p.grad is not None]
            finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if finite:
            self.skipped = 0
            return
        where = (
            f"epoch {engine.state.epoch}, iteration {engine.state.iteration} "
            f"(batch {(engine.state.iteration - 1) % engine.state.epoch_length + 1} of {engine.state.epoch_length})"
        )
        what = f"loss {loss.item()}" if not torch.isfinite(loss).all() else "a non-finite gradient"
        self.skipped += 1
        if self.action == "stop" or self.skipped > self.max_skips:
            streak = f" after {self.skipped - 1} skipped steps in a row" if self.action == "skip" else ""
            raise FloatingPointError(
                f"{what} at {where}{streak}: training stopped; the last checkpoint holds the last good state "
                "(lower the learning rate, check the data, or set nonfinite_loss to 'skip')."
            )
        engine.logger.warning(f"{what} at {where}: step skipped ({self.skipped} in a row).")
        if getattr(engine, "scaler_", None) is None:
            engine.optimizer.zero_grad(set_to_none=True)


class GradientClipping:
    """Clip the gradient norm of a MONAI trainer's network to ``max_norm`` after each backward pass, before
    the optimizer step (the authors' nnU-Net trainer clips at 12); with AMP the gradients are unscaled first.

    Args:
        max_norm: the largest total gradient norm; None: no clipping.
    """

    def __init__(self, max_norm: float | None) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm is not None:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), float(self.max_norm))
