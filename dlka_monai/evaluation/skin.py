# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Skin-lesion metrics as the skin literature reports them (Dice, sensitivity, specificity, accuracy of the
lesion pixels), per image and summarised, and overlay PNGs of the predicted and true lesion contours."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from dlka_monai.data.skin import read_rgb

__all__ = [
    "SKIN_METRICS",
    "PRED_COLOR",
    "LABEL_COLOR",
    "confusion_counts",
    "skin_metrics",
    "summarize_skin",
    "contour_overlay",
    "read_mask",
    "evaluate_skin",
    "evaluate_skin_model",
]

SKIN_METRICS = ("dice", "sensitivity", "specificity", "accuracy")
PRED_COLOR = (255, 0, 0)
"""Contour colour of the prediction in overlays (red)."""
LABEL_COLOR = (0, 255, 0)
"""Contour colour of the ground truth in overlays (green)."""


def confusion_counts(pred: np.ndarray, label: np.ndarray) -> dict[str, int]:
    """Lesion-pixel counts ``tp``, ``fp``, ``fn``, ``tn`` of two masks of one shape (non-zero: lesion)."""
    pred, label = np.asarray(pred) != 0, np.asarray(label) != 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction of shape {pred.shape} but ground truth of shape {label.shape}.")
    tp = int(np.count_nonzero(pred & label))
    fp = int(np.count_nonzero(pred & ~label))
    fn = int(np.count_nonzero(~pred & label))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def skin_metrics(counts: Mapping[str, int]) -> dict[str, float]:
    """Dice ``2TP / (2TP + FP + FN)``, sensitivity ``TP / (TP + FN)``, specificity ``TN / (TN + FP)`` and
    accuracy ``(TP + TN) / N`` of :func:`confusion_counts`. Dice of two empty masks is 1; a sensitivity
    without lesion pixels (or a specificity without background) is NaN."""
    tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def summarize_skin(records: Sequence[Mapping]) -> dict:
    """Summary of per-image records (each holding :func:`confusion_counts`' keys): ``mean`` of the
    per-image metrics (NaNs left out) and ``pooled``, the metrics of all pixels together (as the authors'
    evaluation computes them), with the number of ``images``."""
    mean = {}
    for name in SKIN_METRICS:
        values = [r[name] for r in records if not math.isnan(r[name])] if records else []
        mean[name] = float(np.mean(values)) if values else math.nan
    total = {k: sum(int(r[k]) for r in records) for k in ("tp", "fp", "fn", "tn")}
    return {"images": len(records), "mean": mean, "pooled": skin_metrics(total)}


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` pixels inside the border of ``mask``."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def contour_overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None, width: int | None = None) -> np.ndarray:
    """``image`` (``[H, W, 3]`` uint8) with the contour of the ground truth ``label`` in
    :data:`LABEL_COLOR` and, drawn over it, that of ``pred`` in :data:`PRED_COLOR` (masks ``[H, W]``).

    Args:
        width: contour width in pixels; default about 1/200 of the image's shorter side, at least 1.
    """
    width = max(1, min(image.shape[:2]) // 200) if width is None else width
    out = np.array(image, dtype=np.uint8, copy=True)
    if label is not None:
        out[_contour(np.asarray(label) != 0, width)] = LABEL_COLOR
    out[_contour(np.asarray(pred) != 0, width)] = PRED_COLOR
    return out


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The mask PNG/BMP ``path`` as a ``[H, W]`` bool array (grey value above 127: lesion)."""
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L")) > 127


def evaluate_skin(
    items: Sequence[Mapping[str, str]], output_dir: str | os.PathLike, overlays: bool = True
) -> dict:
    """Compare predicted masks with the ground truth at the images' resolution; write ``skin_metrics.csv``
    (one row per image), ``skin_summary.json`` (:func:`summarize_skin`) and, with ``overlays``,
    ``overlays/<image name>.png`` (:func:`contour_overlay`) into ``output_dir``.

    Args:
        items: one dict per image with the paths ``image``, ``label`` (ground truth) and ``pred``.
        output_dir: output folder (created).

    Returns:
        the summary.

    Raises:
        ValueError: a prediction of another size than its ground truth, naming both files.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for item in items:
        pred, label = read_mask(item["pred"]), read_mask(item["label"])
        if pred.shape != label.shape:
            raise ValueError(f"{item['pred']}: prediction of {pred.shape[1]}×{pred.shape[0]} pixels, but {item['label']} is {label.shape[1]}×{label.shape[0]}.")
        counts = confusion_counts(pred, label)
        records.append({"image": str(item["image"]), **skin_metrics(counts), **counts})
        if overlays:
            (out / "overlays").mkdir(exist_ok=True)
            overlay = contour_overlay(read_rgb(item["image"]), pred, label)
            Image.fromarray(overlay).save(out / "overlays" / f"{Path(item['image']).stem}.png")
    with open(out / "skin_metrics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", *SKIN_METRICS, "tp", "fp", "fn", "tn"])
        writer.writeheader()
        writer.writerows(records)
    summary = summarize_skin(records)
    (out / "skin_summary.json").write_text(json.dumps(_null_nan(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def _null_nan(value):
    """``value`` with NaNs as None: NaN is not JSON, undefined values are written as null."""
    if isinstance(value, Mapping):
        return {k: _null_nan(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate_skin_model(
    network: nn.Module,
    items: Sequence[Mapping[str, str]],
    output_dir: str | os.PathLike,
    normalization: Mapping,
    device: str | torch.device = "cpu",
    overlays: bool = True,
) -> dict:
    """Segment the images of a datalist (e.g. its ``test`` part) with ``network`` into
    ``output_dir/masks`` (:func:`dlka_monai.inference.skin.segment_images`), then evaluate them against
    their ``label`` masks into ``output_dir`` (:func:`evaluate_skin`); returns the summary."""
    from dlka_monai.inference.skin import segment_images

    if not items:
        raise ValueError("no images to evaluate.")
    preds = segment_images([item["image"] for item in items], network, Path(output_dir) / "masks", normalization, device=device)
    return evaluate_skin([{**item, "pred": str(p)} for item, p in zip(items, preds)], output_dir, overlays)
