# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The training log a person reads: one console line per epoch, per-iteration lines in a file, and the
per-epoch history that the progress plot is drawn from."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from tqdm import tqdm

__all__ = ["TrainingLog", "load_history"]

logger = logging.getLogger(__name__)


def load_history(path: str | os.PathLike) -> list[dict]:
    """The per-epoch records a :class:`TrainingLog` wrote to ``path`` (``[]`` if there is none)."""
    try:
        return list(json.loads(Path(path).read_text(encoding="utf-8"))["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _batch_loss(output: dict | list[dict]) -> torch.Tensor:
    return (output[0] if isinstance(output, (list, tuple)) else output)[Keys.LOSS]


class TrainingLog:
    """Print one line per training epoch and keep the per-epoch history.

    The console line (written with ``tqdm.write``, so it never breaks a progress bar) reads, e.g.::

        epoch 12/40  loss 0.4213  dice 0.7125 [0.81 0.77 ...]  best 0.7125 (epoch 12)  lr 2.1e-03  0:14  ETA 6:32

    with the validation Dice (the evaluator's key metric, then the per-class values of
    :class:`~dlka_monai.training.PerClassDice`, in class order, if it is attached) only on epochs that were validated.
    Every iteration's loss, every epoch line and every other log record of the run (at the levels the
    loggers let through) go to ``<log_dir>/train.log``, not to the console. The history (loss, learning
    rate, seconds, validation Dice per epoch) is rewritten to ``<log_dir>/progress.json`` after each
    epoch; a resumed run keeps the records of the epochs before it, so plots cover the whole training.

    Attach it after the ``ValidationHandler``, so that an epoch's validation is done when its line is written.

    Args:
        log_dir: folder of ``train.log`` and ``progress.json``.
        optimizer: its first parameter group's ``lr`` during the epoch is logged.
        evaluator: the validation engine; None if there is no validation.
        output_transform: engine output -> loss; default: the ``loss`` of the output dict, or of the first
            dict of a decollated output (each holds the batch's loss).
        log_file: file name of the text log in ``log_dir``.
        class_prefix: the evaluator metrics named ``<class_prefix><class>`` are the per-class Dice.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        optimizer: torch.optim.Optimizer | None = None,
        evaluator: Engine | None = None,
        output_transform: Callable | None = None,
        log_file: str = "train.log",
        class_prefix: str = "val_dice_",
    ) -> None:
        self.log_dir = Path(log_dir)
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.output_transform = output_transform or _batch_loss
        self.log_file = log_file
        self.class_prefix = class_prefix
        self.history: list[dict] = []
        self._losses: list[float] = []
        self._epoch_start = 0.0
        self._epoch_seconds: list[float] = []
        self._validated = False
        self._lr: float | None = None
        self._file_handler: logging.Handler | None = None

    @property
    def history_path(self) -> Path:
        return self.log_dir / "progress.json"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._validation_completed)

    def _started(self, engine: Engine) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # every record of the run goes to the file; the console handler's level keeps DEBUG off the console
        self._file_handler = logging.FileHandler(self.log_dir / self.log_file, encoding="utf-8")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        logging.getLogger().addHandler(self._file_handler)
        if logger.getEffectiveLevel() > logging.DEBUG:
            logger.setLevel(logging.DEBUG)
        self._epoch_seconds = []

    def _epoch_started(self, engine: Engine) -> None:
        if not self._epoch_seconds:
            # the first epoch of this run: a resumed run (its epoch is known only now, after the checkpoint
            # loader's STARTED handler) keeps the records of the epochs before it
            self.history = [r for r in load_history(self.history_path) if r["epoch"] < engine.state.epoch]
        self._losses = []
        self._validated = False
        # read now: the scheduler steps at the end of the epoch, before the line is written
        self._lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        self._epoch_start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        loss = float(torch.as_tensor(self.output_transform(engine.state.output)).detach())
        self._losses.append(loss)
        step = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        logger.debug(f"epoch {engine.state.epoch} iteration {step}/{engine.state.epoch_length} loss {loss:.4f}")

    def _validation_completed(self, evaluator: Engine) -> None:
        self._validated = True

    def _epoch_completed(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self._epoch_seconds.append(seconds)
        record: dict = {
            "epoch": engine.state.epoch,
            "loss": sum(self._losses) / len(self._losses) if self._losses else math.nan,
            "lr": self._lr,
            "seconds": seconds,
        }
        if self._validated:
            metrics = self.evaluator.state.metrics
            key = self.evaluator.state.key_metric_name or next(iter(metrics), None)
            record["dice"] = float(metrics[key]) if key in metrics else math.nan
            n = len(self.class_prefix)
            record["class_dice"] = {k[n:]: float(v) for k, v in metrics.items() if k.startswith(self.class_prefix)}
        self.history.append(record)
        remaining = engine.state.max_epochs - engine.state.epoch
        eta = remaining * sum(self._epoch_seconds) / len(self._epoch_seconds)
        line = self.format_line(record, engine.state.max_epochs, eta)
        tqdm.write(line)
        logger.debug(line)
        tmp = self.history_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"epochs": self.history}, indent=1), encoding="utf-8")
        os.replace(tmp, self.history_path)

    def best(self, upto: int | None = None) -> tuple[float, int] | None:
        """The best validation Dice of the history and its epoch (up to epoch ``upto``), or None."""
        scored = [(r["dice"], r["epoch"]) for r in self.history if "dice" in r and (upto is None or r["epoch"] <= upto)]
        scored = [s for s in scored if not math.isnan(s[0])]
        return max(scored, key=lambda s: (s[0], -s[1])) if scored else None

    def format_line(self, record: dict, max_epochs: int, eta: float) -> str:
        """The console line of one epoch's ``record``."""
        width = len(str(max_epochs))
        parts = [f"epoch {record['epoch']:>{width}}/{max_epochs}", f"loss {record['loss']:.4f}"]
        if "dice" in record:
            per_class = " ".join(f"{v:.2f}" for v in record["class_dice"].values())
            parts.append(f"dice {record['dice']:.4f}" + (f" [{per_class}]" if per_class else ""))
        best = self.best(record["epoch"])
        if best is not None:
            parts.append(f"best {best[0]:.4f} (epoch {best[1]})")
        if record["lr"] is not None:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"{_duration(record['seconds'])}")
        parts.append(f"ETA {_duration(eta)}")
        return "  ".join(parts)

    def _close(self, engine: Engine) -> None:
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

    def _failed(self, engine: Engine, e: Exception) -> None:
        self._close(engine)
        raise e
