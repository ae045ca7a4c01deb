# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Per-case, per-class segmentation metrics in physical units, with MONAI's metric functions.

Conventions for empty masks (a class absent from the ground truth, the prediction, or both):

* both empty: Dice = Jaccard = 1, HD95 = ASD = NaN;
* one empty: Dice = Jaccard = 0, HD95 = ASD = NaN.

NaN distances are left out of means and standard deviations and counted in ``n_nan`` in the summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou
from monai.networks.utils import one_hot

__all__ = ["SYNAPSE_8_ORGANS", "METRICS", "case_metrics", "summarize"]

# the 8 organs of the standard Synapse benchmark (BTCV label values)
SYNAPSE_8_ORGANS = (1, 2, 3, 4, 6, 7, 8, 11)
METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm")


def case_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float]) -> list[dict]:
    """Dice, Jaccard, HD95 and average (symmetric) surface distance of every foreground class.

    Args:
        pred: label map ``[*spatial]`` or ``[1, *spatial]`` (integer values).
        label: ground truth, same shape.
        num_classes: classes including background.
        spacing: voxel size in mm along the spatial axes of the arrays.

    Returns:
        one dict per class ``1 .. num_classes - 1``: ``class``, ``dice``, ``jaccard``, ``hd95_mm``, ``asd_mm``.
    """
    pred, label = (torch.as_tensor(t).reshape(1, 1, *t.shape[-len(spacing) :]).long() for t in (pred, label))
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape[2:])} and label {tuple(label.shape[2:])} differ in shape.")
    p, y = one_hot(pred, num_classes), one_hot(label, num_classes)
    spacing = [float(s) for s in spacing]
    dice = compute_dice(p, y, include_background=False, ignore_empty=False)[0]
    iou = compute_iou(p, y, include_background=False, ignore_empty=False)[0]
    rows = []
    for c in range(1, num_classes):
        has_p, has_y = bool(p[0, c].any()), bool(y[0, c].any())
        row = {"class": c, "dice": float(dice[c - 1]), "jaccard": float(iou[c - 1])}
        if has_p and has_y:
            pc, yc = p[:, c : c + 1], y[:, c : c + 1]
            row["hd95_mm"] = float(compute_hausdorff_distance(pc, yc, include_background=True, percentile=95, spacing=spacing))
            row["asd_mm"] = float(compute_average_surface_distance(pc, yc, include_background=True, symmetric=True, spacing=spacing))
        else:
            row["dice"] = row["jaccard"] = float(has_p == has_y)
            row["hd95_mm"] = row["asd_mm"] = math.nan
        rows.append(row)
    return rows


def _stats(values: Sequence[float]) -> dict:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return {
        "mean": float(finite.mean()) if finite.size else math.nan,
        "std": float(finite.std()) if finite.size else math.nan,
        "n": int(finite.size),
        "n_nan": len(values) - int(finite.size),
    }


def summarize(rows: Sequence[Mapping], class_names: Mapping[int, str], subset: Sequence[int] = SYNAPSE_8_ORGANS) -> dict:
    """Mean/std per class and metric, and over all classes and over ``subset`` (per-case means of the classes).

    Args:
        rows: the rows of :func:`case_metrics` with a ``case`` key added.
        class_names: class value -> name.
        subset: classes of the headline mean (the 8 Synapse organs); classes not present are ignored.
    """
    classes = sorted({int(r["class"]) for r in rows})
    summary: dict = {"per_class": {}, "conventions": __doc__.split("Conventions")[1].strip()}
    for c in classes:
        mine = [r for r in rows if int(r["class"]) == c]
        summary["per_class"][class_names.get(c, str(c))] = {m: _stats([float(r[m]) for r in mine]) for m in METRICS}
    for key, group in (("all_classes", classes), ("synapse_8_organs", [c for c in subset if c in classes])):
        if not group:
            continue
        cases = sorted({r["case"] for r in rows})
        summary[key] = {"classes": group}
        for m in METRICS:
            per_case = []
            for case in cases:
                vals = [float(r[m]) for r in rows if r["case"] == case and int(r["class"]) in group]
                finite = [v for v in vals if not math.isnan(v)]
                per_case.append(float(np.mean(finite)) if finite else math.nan)
            summary[key][m] = _stats(per_case)
    return summary
