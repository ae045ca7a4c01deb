# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The progress plot of a training run (as nnU-Net's): loss, validation Dice and learning rate per epoch."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from dlka_monai.training.progress import load_history

__all__ = ["ProgressPlot", "plot_progress"]


def plot_progress(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Draw ``history`` (the records of :class:`~dlka_monai.training.TrainingLog`) to the PNG ``path``:
    training loss and validation Dice (mean, and per class, thin) against the epoch on top, the learning
    rate below.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    validated = [r for r in history if "dice" in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(2, 1))
    top.plot(epochs, [r["loss"] for r in history], ".-", color="tab:blue", label="training loss")  # dots: one epoch shows
    top.set_ylabel("loss")
    dice_axis = top.twinx()
    classes = list(validated[-1]["class_dice"]) if validated else []
    for c in classes:
        values = [r["class_dice"].get(c, math.nan) for r in validated]
        dice_axis.plot([r["epoch"] for r in validated], values, color="tab:green", alpha=0.25, linewidth=0.8)
    dice_axis.plot(
        [r["epoch"] for r in validated], [r["dice"] for r in validated], "o-", color="tab:green", label="validation Dice (mean)"
    )
    dice_axis.set_ylabel("validation Dice (thin: per class)")
    dice_axis.set_ylim(0, 1)
    lines = top.get_legend_handles_labels()[0] + dice_axis.get_legend_handles_labels()[0]
    top.legend(lines, [line.get_label() for line in lines], loc="center right")
    top.grid(alpha=0.3)
    bottom.plot(epochs, [r["lr"] for r in history], ".-", color="tab:orange")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class ProgressPlot:
    """Write ``<log_dir>/progress.png`` from the history ``TrainingLog`` keeps in ``<log_dir>/progress.json``
    when training completes, a resumed run included (its plot covers the epochs before it too).

    Args:
        log_dir: the ``log_dir`` of the run's :class:`~dlka_monai.training.TrainingLog`.
        filename: PNG file name.
    """

    def __init__(self, log_dir: str | os.PathLike, filename: str = "progress.png") -> None:
        self.log_dir = Path(log_dir)
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        history = load_history(self.log_dir / "progress.json")
        if history:
            plot_progress(history, self.log_dir / self.filename)
