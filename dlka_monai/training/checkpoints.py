# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Crash-safe training checkpoints: atomic writes of the whole training state, resuming from the newest
complete one, and the best model of validation."""

from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable

from dlka_monai.weights import atomic_save, check_state_dict, safe_load, save_model

__all__ = ["latest_checkpoint", "TrainingCheckpointer"]

logger = logging.getLogger(__name__)

_INTERVAL = re.compile(r"checkpoint_(epoch|iteration)=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the newest complete interval checkpoint (highest epoch/iteration) in ``ckpt_dir``.

    Files that are not complete torch archives (left by a writer that was not atomic) are skipped with a
    warning; temporary files of :func:`atomic_save` never match.

    Raises:
        FileNotFoundError: when there is none, naming the folder.
    """
    found = []
    for path in Path(ckpt_dir).glob("*checkpoint_*=*.pt"):
        match = _INTERVAL.search(path.name)
        if not match:
            continue
        if not zipfile.is_zipfile(path):
            logger.warning(f"skipping {path}: not a complete checkpoint file.")
            continue
        found.append((int(match.group(2)), path))
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir} (looked for *checkpoint_epoch=N.pt).")
    return str(max(found)[1])


def _randomizables(obj: Any, seen: set[int] | None = None) -> Iterator[Randomizable]:
    """The random transforms in a transform chain, with the ones they hold (a dict transform often keeps its
    own array transform, with a random state of its own)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield obj
    children = getattr(obj, "transforms", None)
    for child in list(children or []) + [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, Randomizable)]:
        if callable(child):
            yield from _randomizables(child, seen)


def _numpy_state(state: tuple) -> dict:
    # as tensors and numbers, so that torch.load(weights_only=True) reads it back
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _numpy_tuple(state: dict) -> tuple:
    return state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"]


class TrainingCheckpointer:
    """Crash-safe checkpoints of a training run, as an ignite handler of the trainer.

    Every ``interval`` epochs (and at the end of training) the whole training state is written atomically
    (:func:`atomic_save`) to ``save_dir/checkpoint_epoch=N.pt``: ``model``, ``optimizer``, ``lr_scheduler``,
    the AMP ``scaler``, ``trainer`` (epoch, iteration, epoch length), ``best`` (best validation metric and
    its epoch) and ``rng`` (Python, NumPy, torch and CUDA generators and the random transforms of the
    training data). Older interval checkpoints are deleted only after the new one is complete, keeping
    ``keep``. A training killed at any moment therefore loses at most the epochs since the last checkpoint,
    and resuming (``resume=True``) restores all of it from :func:`latest_checkpoint` when the trainer starts.

    With an ``evaluator``, the network is also written atomically to ``save_dir/best_filename`` whenever its
    key metric improves, as ``{"model": state_dict, "plan": plan}`` (:func:`dlka_monai.weights.save_model`):
    MONAI's ``CheckpointLoader`` and MONAI Label load its ``model``, and the plan lets ``dlka-segment`` and
    the inference config rebuild the network and its preprocessing. The best value survives resuming, so a
    worse model after a restart does not replace it. A run that never validated writes its last model there
    when it ends. The interval checkpoints carry the plan too.

    Only the rank-0 process writes; every process loads.

    Args:
        save_dir: folder of the checkpoints (created if missing).
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped).
        optimizer: its optimizer.
        lr_scheduler: the learning-rate scheduler, if any.
        evaluator: the validation engine whose ``best_metric`` selects ``best_filename``.
        interval: epochs between checkpoints.
        keep: interval checkpoints kept on disk (>= 1).
        resume: restore the newest checkpoint in ``save_dir`` when the trainer starts; an error naming the
            folder when there is none.
        best_filename: file name of the best model, or None not to write it.
        map_location: where tensors are loaded when resuming.
        plan: the plan of ``network`` (:func:`dlka_monai.plan.network_plan`), saved with its weights.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        interval: int = 1,
        keep: int = 1,
        resume: bool = False,
        best_filename: str | None = "model.pt",
        map_location: Any = "cpu",
        plan: dict | None = None,
    ) -> None:
        if interval < 1 or keep < 1:
            raise ValueError(f"interval and keep must be >= 1, got {interval} and {keep}.")
        self.save_dir = Path(save_dir)
        self.network = getattr(network, "module", network)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.interval = interval
        self.keep = keep
        self.resume = resume
        self.best_filename = best_filename
        self.map_location = map_location
        self.plan = plan
        self.trainer: Engine | None = None
        self._saved_epoch = -1
        self._best_saved_epoch = -1

    def attach(self, engine: Engine) -> None:
        """Save on ``engine``'s epochs (and the best model on the evaluator's), resume when it starts."""
        self.trainer = engine
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        if self.best_filename:
            if self.evaluator is not None:
                self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._save_best)
            engine.add_event_handler(Events.COMPLETED, self._save_unvalidated)

    def _random_transforms(self) -> list[Randomizable]:
        dataset = getattr(getattr(self.trainer, "data_loader", None), "dataset", None)
        return list(_randomizables(getattr(dataset, "transform", None)))

    def _rng_state(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "transforms": [_numpy_state(t.R.get_state()) for t in self._random_transforms()],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        transforms = self._random_transforms()
        if len(transforms) == len(state["transforms"]):
            for t, s in zip(transforms, state["transforms"]):
                t.R.set_state(_numpy_tuple(s))
        else:
            logger.warning("the random transforms differ from the checkpoint's; their random states start afresh.")

    def state_dict(self) -> dict:
        """The whole training state, as saved."""
        trainer = self.trainer.state
        scaler = getattr(self.trainer, "scaler_", None)
        evaluator = None if self.evaluator is None else self.evaluator.state
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "trainer": {"epoch": trainer.epoch, "iteration": trainer.iteration, "epoch_length": trainer.epoch_length},
            "best": {
                "metric": None if evaluator is None else float(evaluator.best_metric),
                "epoch": None if evaluator is None else int(evaluator.best_metric_epoch),
            },
            "rng": self._rng_state(),
            "plan": self.plan,
        }

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_epoch=N.pt`` for the current epoch (once), then delete the older ones."""
        epoch = engine.state.epoch
        if epoch == self._saved_epoch or idist.get_rank() != 0:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"checkpoint_epoch={epoch}.pt"
        atomic_save(self.state_dict(), path)
        self._saved_epoch = epoch
        older = sorted(
            (int(m.group(2)), p)
            for p in self.save_dir.glob("checkpoint_epoch=*.pt")
            if (m := _INTERVAL.search(p.name)) and int(m.group(2)) < epoch
        )
        for _, stale in older[: max(0, len(older) - (self.keep - 1))]:
            stale.unlink(missing_ok=True)
        # temporary files of runs killed while saving (only rank 0 writes, so none is being written now)
        for leftover in self.save_dir.glob(".checkpoint_epoch=*.tmp"):
            leftover.unlink(missing_ok=True)
        logger.debug(f"saved {path}")

    def _write_model(self) -> Path:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / self.best_filename
        if self.plan is None:
            atomic_save(self.network.state_dict(), path)
        else:
            save_model(path, self.network, self.plan)
        return path

    def _save_best(self, evaluator: Engine) -> None:
        state = evaluator.state
        if state.best_metric_epoch != state.epoch or state.epoch == self._best_saved_epoch or idist.get_rank() != 0:
            return
        path = self._write_model()
        self._best_saved_epoch = state.epoch
        logger.debug(f"saved {path} (best {state.best_metric:.4f} at epoch {state.epoch})")

    def _save_unvalidated(self, engine: Engine) -> None:
        # a run that never validated (val_interval beyond max_epochs) still leaves a model to use: its last one
        evaluated = self.evaluator is not None and getattr(self.evaluator.state, "best_metric_epoch", -1) not in (-1, None)
        if evaluated or idist.get_rank() != 0:
            return
        path = self._write_model()
        logger.info(f"saved {path} (the model of the last epoch: no validation ran)")

    def load(self, engine: Engine) -> None:
        """Restore the newest checkpoint of ``save_dir`` into the network, optimizer, scheduler, scaler,
        trainer, evaluator's best metric and random generators."""
        self.trainer = engine
        path = latest_checkpoint(self.save_dir)
        ckpt = safe_load(path, self.map_location)
        max_epochs = engine.state.max_epochs
        if ckpt["trainer"]["epoch"] > max_epochs:
            raise ValueError(
                f"{path} is at epoch {ckpt['trainer']['epoch']}, beyond max_epochs={max_epochs}; raise max_epochs to go on."
            )
        check_state_dict(ckpt.get("model"), self.network, None, path)
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.lr_scheduler is not None and ckpt["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler = getattr(engine, "scaler_", None)
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        engine.state.epoch = ckpt["trainer"]["epoch"]
        engine.state.iteration = ckpt["trainer"]["iteration"]
        if self.evaluator is not None and ckpt["best"]["epoch"] is not None:
            self.evaluator.state.best_metric = ckpt["best"]["metric"]
            self.evaluator.state.best_metric_epoch = ckpt["best"]["epoch"]
        self._set_rng_state(ckpt["rng"])
        self._saved_epoch = engine.state.epoch
        logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
