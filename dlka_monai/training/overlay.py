# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""A picture of one validation case at the end of training: prediction against label, in radiological
orientation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.transforms import Orientation
from PIL import Image

from dlka_monai.data.transforms import RAS_LABELS
from dlka_monai.evaluation.writer import radiological_slices

__all__ = ["ValidationOverlay"]


class ValidationOverlay:
    """Keep the first case of each validation and, when training completes (a resumed run included),
    write it as ``<log_dir>/<filename>``: axial slices, image | ground truth | prediction, anterior up
    and the patient's right on the viewer's left (``dlka_monai.evaluation.writer.radiological_slices``).

    The case is taken from the evaluator's output: ``image`` (intensities in [0, 1] shown as they are,
    others stretched from their minimum to their maximum; with its affine), ``pred`` and ``label`` (one-hot or label maps, channel first) in the validation space;
    3D cases only (validation on 2D slices writes no picture).

    Args:
        evaluator: the validation engine.
        log_dir: output folder.
        filename: PNG file name.
        num_slices: axial slices (rows) in the picture.
        min_width: the picture is enlarged by a whole factor (nearest neighbour) to at least this many pixels
            across, as coarse validation grids give small pictures.
    """

    def __init__(self, evaluator: Engine, log_dir: str | os.PathLike, filename: str = "validation_overlay.png", num_slices: int = 3, min_width: int = 768) -> None:
        self.evaluator = evaluator
        self.path = Path(log_dir) / filename
        self.num_slices = num_slices
        self.min_width = min_width
        self.case: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._ras = Orientation(axcodes="RAS", labels=RAS_LABELS)

    def attach(self, engine: Engine) -> None:
        self.evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), self._keep)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _keep(self, evaluator: Engine) -> None:
        item = evaluator.state.output[0]
        image = item["image"]
        if image.ndim != 4:  # 2D validation slices (the 2D net's .npz data) have no axial stack to show
            return
        affine = image.affine if isinstance(image, MetaTensor) else np.eye(4)

        def plain(t):  # a plain tensor, so that the MetaTensor below takes this affine without a warning
            return torch.as_tensor(t.as_tensor() if isinstance(t, MetaTensor) else t).detach().cpu()

        def label_map(t):
            t = plain(t)
            return t.argmax(0, keepdim=True) if t.shape[0] > 1 else t.round()

        self.case = tuple(
            np.asarray(self._ras(MetaTensor(t, affine=affine)))[0]
            for t in (plain(image).float(), label_map(item["label"]), label_map(item["pred"]))
        )

    def write(self, engine: Engine | None = None) -> None:
        """Write the kept case (nothing if no validation ran)."""
        if self.case is None:
            return
        image, label, pred = self.case
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0.0 and hi <= 1.0:  # a window onto [0, 1] is shown as it is; other normalisations stretched
            lo, hi = 0.0, 1.0
        gray = (np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255).astype(np.uint8)
        panel = radiological_slices(gray, label.astype(np.int64), pred.astype(np.int64), self.num_slices)
        factor = max(1, -(-self.min_width // panel.shape[1]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(panel).resize((panel.shape[1] * factor, panel.shape[0] * factor), Image.NEAREST).save(self.path)
