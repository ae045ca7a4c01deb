# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Validation Dice of every class, as metrics of the evaluator (the key metric is only their mean)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.metrics import DiceMetric

__all__ = ["PerClassDice"]


class PerClassDice:
    """Mean Dice of each foreground class over the validation cases, stored in the evaluator's
    ``state.metrics`` as ``<prefix><class>`` (``val_dice_1``, ``val_dice_2``, ...), where
    ``TensorBoardStatsHandler`` and :class:`~dlka_monai.training.TrainingLog` find them.

    A class absent from a case's label is left out of that class's mean (NaN if absent from all).
    Attach it before the handlers that read the metrics.

    Args:
        output_transform: engine output -> ``(pred, label)``, one-hot ``[C, *spatial]`` tensors per case.
        prefix: name prefix of the metrics.
    """

    def __init__(
        self, output_transform: Callable = from_engine(["pred", "label"]), prefix: str = "val_dice_"
    ) -> None:
        self.output_transform = output_transform
        self.prefix = prefix
        self.metric = DiceMetric(include_background=False, reduction="mean_batch")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.metric.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _iteration_completed(self, engine: Engine) -> None:
        pred, label = self.output_transform(engine.state.output)
        self.metric(y_pred=pred, y=label)

    def _epoch_completed(self, engine: Engine) -> None:
        values = self.metric.aggregate()
        values = torch.as_tensor(values).reshape(-1).tolist()
        for c, value in enumerate(values, start=1):
            engine.state.metrics[f"{self.prefix}{c}"] = value
