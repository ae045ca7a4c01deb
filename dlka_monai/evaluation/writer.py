# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""An ignite handler that writes the evaluation results: metrics.csv, summary.json, one PNG per case and
report.html."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import LoadImage, Orientation
from PIL import Image, ImageDraw, ImageFont

from dlka_monai.data.transforms import RAS_LABELS
from dlka_monai.data.validation import InvalidInputError
from dlka_monai.evaluation.metrics import CONVENTION_METRICS, CONVENTIONS, SYNAPSE_8_ORGANS, case_metrics, summarize
from dlka_monai.evaluation.report import write_report

__all__ = ["MetricsWriter", "radiological_slices"]

_PALETTE = np.array(
    [(0, 0, 0)] + [tuple(int(255 * v) for v in c) for c in
     [(0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.3, 0.9), (0.9, 0.8, 0.1), (0.8, 0.3, 0.8), (0.1, 0.8, 0.8),
      (1.0, 0.5, 0.0), (0.6, 0.3, 0.1), (0.5, 0.9, 0.4), (0.9, 0.5, 0.6), (0.4, 0.4, 1.0), (0.7, 0.7, 0.7),
      (0.3, 0.6, 0.3)]],
    dtype=np.uint8,
)


def _spacing(affine: torch.Tensor) -> list[float]:
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0)).tolist()


def _check_grid(case: str, pred: torch.Tensor, label: torch.Tensor) -> None:
    """The prediction (inverted to the image's space) and the label map must be on one voxel grid: a
    label of another shape or affine would be compared voxel by voxel with the wrong anatomy."""
    label_file = label.meta.get("filename_or_obj", "the label map")
    p_shape, l_shape = tuple(pred.shape[1:]), tuple(label.shape[1:])
    if p_shape != l_shape:
        raise InvalidInputError(
            f"case {case}: the prediction ({'x'.join(map(str, p_shape))}) and the label map {label_file} "
            f"({'x'.join(map(str, l_shape))}) differ in shape; the label map must be on its image's voxel grid."
        )
    p_affine, l_affine = (np.asarray(t.affine, dtype=float) for t in (pred, label))
    spacing = max(_spacing(l_affine))
    linear = np.abs(p_affine[:3, :3] - l_affine[:3, :3]).max()
    origin = np.abs(p_affine[:3, 3] - l_affine[:3, 3]).max()
    # the tolerances of dlka_monai.data.check_label: float32 headers, far below a voxel
    if linear > 1e-4 * spacing or origin > 1e-2:
        raise InvalidInputError(
            f"case {case}: the affine of the label map {label_file} differs from the prediction's (its image's) "
            f"by up to {max(linear, origin):.3g} mm; the label map must be on its image's voxel grid."
        )


def _overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    mask = labels > 0
    colours = _PALETTE[np.clip(labels, 0, len(_PALETTE) - 1)].astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * colours[mask]
    return rgb.astype(np.uint8)


def _column_titles(panel: np.ndarray, titles: tuple[str, ...]) -> np.ndarray:
    """``panel`` under a white strip naming its equally wide columns."""
    width = panel.shape[1] // len(titles)
    strip = Image.new("RGB", (panel.shape[1], 16), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for i, title in enumerate(titles):
        draw.text((i * width + max((width - draw.textlength(title, font=font)) / 2, 2), 2), title, fill="black", font=font)
    return np.concatenate([np.asarray(strip), panel], axis=0)


def radiological_slices(gray: np.ndarray, label: np.ndarray, pred: np.ndarray, num_slices: int = 3) -> np.ndarray:
    """Axial slices as radiologists show them (anterior up, the patient's right on the viewer's left):
    one row per slice of image | ground truth | prediction, the label maps overlaid in colour.

    Args:
        gray: the image as uint8, a RAS ``(x, y, z)`` array.
        label: the ground-truth label map, integer RAS ``(x, y, z)``.
        pred: the predicted label map, integer RAS ``(x, y, z)``.
        num_slices: slices, evenly spread over those that hold ground-truth foreground (over all if none does).

    Returns:
        An RGB uint8 array ``(num_slices * y, 3 * x, 3)``.
    """
    area = (label > 0).sum(axis=(0, 1))
    candidates = np.flatnonzero(area) if area.any() else np.arange(gray.shape[2])
    slices = candidates[np.linspace(0, len(candidates) - 1, num_slices).round().astype(int)]
    rows = []
    for z in slices:
        g, lab, prd = (np.flip(a[:, :, z].T, (0, 1)) for a in (gray, label, pred))
        rows.append(np.concatenate([np.repeat(g[..., None], 3, -1), _overlay(g, lab), _overlay(g, prd)], axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


class MetricsWriter:
    """Compute per-case, per-class metrics of ``pred`` against ``label`` (both in the original image
    space, label maps ``[1, *spatial]``), with the spacing taken from the label's affine, and write
    ``metrics.csv`` (one row per case and class), ``summary.json``, ``<case>.png`` (a few axial slices:
    image, ground truth, prediction, under column titles) and ``report.html``
    (:func:`dlka_monai.evaluation.report.write_report`: the metrics in every convention, the PNGs, ``plan``).

    A prediction and label map of different shapes or affines stop the evaluation with a one-line error
    naming the case.

    Args:
        output_dir: where to write.
        num_classes: classes including background.
        class_names: class value -> name (e.g. the ``channel_def`` of the bundle metadata).
        hu_window: display window of the PNG images.
        num_slices: axial slices per PNG.
        convention: ``"default"`` (Dice, Jaccard, HD95 and ASD in mm, missed organs without a distance) or
            ``"synapse_tables"`` (Dice and HD95 in voxels as the published Synapse tables, HD95 0 for a
            missed organ); see :mod:`dlka_monai.evaluation.metrics`. The CSV and JSON files are in this
            convention; the report shows every convention.
        plan: the model's plan, shown in the report.
        report: whether to write ``report.html``.

    Raises:
        ValueError: for an unknown convention.
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int,
        class_names: Mapping,
        hu_window: tuple[float, float] = (-175, 250),
        num_slices: int = 3,
        convention: str = "default",
        plan: Mapping | None = None,
        report: bool = True,
    ) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown metric convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")
        self.convention = convention
        self.output_dir = Path(output_dir)
        self.num_classes = num_classes
        self.class_names = {int(k): v for k, v in class_names.items()}
        self.hu_window = hu_window
        self.num_slices = num_slices
        self.plan = plan
        self.report = report
        self.rows: list[dict] = []
        # convention -> rows; those of ``convention`` are ``rows``, the others only for the report
        self.report_rows: dict[str, list[dict]] = {}
        self._clear()
        self._load = LoadImage(image_only=True, ensure_channel_first=True)
        self._ras = Orientation(axcodes="RAS", labels=RAS_LABELS)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _clear(self) -> None:
        self.rows.clear()
        others = [c for c in CONVENTIONS if c != self.convention] if self.report else []
        self.report_rows = {self.convention: self.rows, **{c: [] for c in others}}

    def iteration_completed(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for item in engine.state.output:
            label = item["label"]
            source = label.meta["filename_or_obj"]
            case = Path(source).name.split(".")[0]
            _check_grid(case, item["pred"], label)
            spacing = _spacing(label.affine)
            for convention, rows in self.report_rows.items():
                for row in case_metrics(item["pred"], label, self.num_classes, spacing, convention):
                    rows.append({"case": case, "class": row["class"], "name": self.class_names.get(row["class"], ""), **row})
            self._png(case, item["pred"], label, item["image"].meta["filename_or_obj"])

    def _png(self, case: str, pred: torch.Tensor, label: torch.Tensor, image_file: str) -> None:
        image, label_a, pred_a = (np.asarray(self._ras(t))[0] for t in (self._load(image_file), label, pred))
        lo, hi = self.hu_window
        gray = (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        panel = radiological_slices(gray, label_a.round().astype(np.int64), pred_a.round().astype(np.int64), self.num_slices)
        panel = _column_titles(panel, ("image", "ground truth", "prediction"))
        Image.fromarray(panel).save(self.output_dir / f"{case}.png")

    def completed(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["case", "class", "name", *CONVENTION_METRICS[self.convention]])
            writer.writeheader()
            writer.writerows(self.rows)
        summary = summarize(self.rows, self.class_names, SYNAPSE_8_ORGANS, self.convention)
        text = json.dumps(summary, indent=2, default=lambda v: None)
        # JSON has no NaN: write null
        (self.output_dir / "summary.json").write_text(text.replace("NaN", "null"), encoding="utf-8")
        if self.report and self.rows:
            images = {r["case"]: self.output_dir / f"{r['case']}.png" for r in self.rows}
            write_report(self.output_dir / "report.html", self.report_rows, self.class_names, images, self.plan)
        engine.state.metrics["mean_dice"] = summary.get("all_classes", {}).get("dice", {}).get("mean", math.nan)
