# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Validation Dice of every class, as metrics of the evaluator (the key metric is only their mean)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.metrics import compute_dice

__all__ = ["PerClassDice"]


class PerClassDice:
    """Mean Dice of each foreground class over the validation cases, stored in the evaluator's
    ``state.metrics`` as ``<prefix><class>`` (``val_dice_1``, ``val_dice_2``, ...), where
    ``TensorBoardStatsHandler`` and :class:`~dlka_monai.training.TrainingLog` find them.

    A class absent from a case's label is left out of that class's mean (NaN if absent from all).
    Attach it before the handlers that read the metrics. The means are of this process's cases: unlike
    MONAI's cumulative metrics it never syncs across ranks, so it may run on rank 0 alone (under DDP the
    key metric is still the synced one).

    Args:
        output_transform: engine output -> ``(pred, label)``, one-hot ``[C, *spatial]`` tensors per case.
        prefix: name prefix of the metrics.
    """

    def __init__(
        self, output_transform: Callable = from_engine(["pred", "label"]), prefix: str = "val_dice_"
    ) -> None:
        self.output_transform = output_transform
        self.prefix = prefix
        self._dice: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._dice.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _iteration_completed(self, engine: Engine) -> None:
        pred, label = (torch.stack(list(t)) for t in self.output_transform(engine.state.output))
        self._dice.append(compute_dice(pred, label, include_background=False).cpu())  # [B, C - 1], NaN: absent

    def _epoch_completed(self, engine: Engine) -> None:
        values = torch.nanmean(torch.cat(self._dice), dim=0).tolist()
        for c, value in enumerate(values, start=1):
            engine.state.metrics[f"{self.prefix}{c}"] = value
