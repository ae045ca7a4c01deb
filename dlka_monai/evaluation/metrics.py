# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Per-case, per-class segmentation metrics, in one of two conventions (:data:`CONVENTIONS`).

``"default"``: Dice, Jaccard, HD95 and average symmetric surface distance in mm (MONAI's metric functions
with the image spacing); a class missed or falsely predicted scores Dice 0 and has no distance (NaN),
which is left out of means and counted.

``"synapse_tables"``: what the published Synapse tables compute, which the D-LKA authors inherit
(``inference_synapse.py`` of their 3D code): Dice, 1 when both masks are empty; HD95 as ``medpy``'s
``hd95`` without spacing (voxel units) when both masks are non-empty, else 0, so a missed organ counts as
a perfect HD95 and lowers the mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou
from monai.networks.utils import one_hot
from scipy import ndimage

__all__ = ["SYNAPSE_8_ORGANS", "CONVENTIONS", "CONVENTION_METRICS", "METRICS", "case_metrics", "hd95_voxels", "summarize"]

# the 8 organs of the standard Synapse benchmark (BTCV label values)
SYNAPSE_8_ORGANS = (1, 2, 3, 4, 6, 7, 8, 11)
# convention -> the metrics of its rows
CONVENTION_METRICS: dict[str, tuple[str, ...]] = {
    "default": ("dice", "jaccard", "hd95_mm", "asd_mm"),
    "synapse_tables": ("dice", "hd95_voxels"),
}
CONVENTIONS = tuple(CONVENTION_METRICS)
METRICS = CONVENTION_METRICS["default"]
# written into summary.json, so that a table says how it was computed
_NOTES = {
    "default": "HD95 and ASD in mm from the image spacing. Empty masks: both empty: Dice = Jaccard = 1, "
    "HD95 = ASD = NaN; one empty (a missed organ or a false positive): Dice = Jaccard = 0, HD95 = ASD = NaN. "
    "NaN distances are left out of means and standard deviations and counted in n_nan.",
    "synapse_tables": "the published Synapse tables' convention (D-LKA's inference_synapse.py): Dice = 1 when "
    "both masks are empty; HD95 = medpy's hd95 in voxels (no spacing) when both are non-empty, else 0, so a "
    "missed organ or a false positive scores HD95 0.",
}


def _check_convention(convention: str) -> None:
    if convention not in CONVENTION_METRICS:
        raise ValueError(f"unknown metric convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")


def _border(mask: np.ndarray) -> np.ndarray:
    # medpy's surface: the voxels that a face-connected erosion removes (outside the array counts as empty)
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def hd95_voxels(pred: np.ndarray, ref: np.ndarray) -> float:
    """``medpy.metric.binary.hd95(pred, ref)`` (no spacing): the 95th percentile of the distances, in voxels,
    from each border voxel of either mask to the other mask's border, pooled over both directions. (MONAI's
    HD95 is the larger of the two directed 95th percentiles, a different number.)

    Args:
        pred: a non-empty binary mask.
        ref: a non-empty binary mask, same shape.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if not (pred.any() and ref.any()):
        raise ValueError("hd95_voxels needs two non-empty masks.")
    # the distances are unchanged within the masks' bounding box grown by one voxel: every border voxel is inside
    nz = np.argwhere(pred | ref)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(nz.min(0), nz.max(0)))
    p_border, r_border = _border(pred[box]), _border(ref[box])
    to_ref = ndimage.distance_transform_edt(~r_border)[p_border]
    to_pred = ndimage.distance_transform_edt(~p_border)[r_border]
    return float(np.percentile(np.hstack((to_ref, to_pred)), 95))


def case_metrics(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float], convention: str = "default"
) -> list[dict]:
    """The metrics of ``CONVENTION_METRICS[convention]`` for every foreground class.

    Args:
        pred: label map ``[*spatial]`` or ``[1, *spatial]`` (integer values).
        label: ground truth, same shape.
        num_classes: classes including background.
        spacing: voxel size in mm along the spatial axes of the arrays (not used by ``"synapse_tables"``,
            whose HD95 is in voxels).
        convention: ``"default"`` or ``"synapse_tables"`` (see the module's description).

    Returns:
        one dict per class ``1 .. num_classes - 1``: ``class`` and the convention's metrics.

    Raises:
        ValueError: for an unknown convention or arrays of different shapes.
    """
    _check_convention(convention)
    pred, label = (torch.as_tensor(t).reshape(1, 1, *t.shape[-len(spacing) :]).long() for t in (pred, label))
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape[2:])} and label {tuple(label.shape[2:])} differ in shape.")
    if convention == "synapse_tables":
        p, y = pred[0, 0].numpy(), label[0, 0].numpy()
        rows = []
        for c in range(1, num_classes):
            pc, yc = p == c, y == c
            total = int(pc.sum()) + int(yc.sum())
            dice = 2.0 * int((pc & yc).sum()) / total if total else 1.0
            hd95 = hd95_voxels(pc, yc) if pc.any() and yc.any() else 0.0
            rows.append({"class": c, "dice": dice, "hd95_voxels": hd95})
        return rows
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


def summarize(
    rows: Sequence[Mapping],
    class_names: Mapping[int, str],
    subset: Sequence[int] = SYNAPSE_8_ORGANS,
    convention: str = "default",
) -> dict:
    """Mean/std per class and metric, and over all classes and over ``subset`` (per-case means of the classes).

    Args:
        rows: the rows of :func:`case_metrics` with a ``case`` key added.
        class_names: class value -> name.
        subset: classes of the headline mean (the 8 Synapse organs); classes not present are ignored.
        convention: the convention ``rows`` were computed in; named, with its rules, in the summary.
    """
    _check_convention(convention)
    metrics = CONVENTION_METRICS[convention]
    classes = sorted({int(r["class"]) for r in rows})
    summary: dict = {"convention": convention, "conventions": _NOTES[convention], "per_class": {}}
    for c in classes:
        mine = [r for r in rows if int(r["class"]) == c]
        summary["per_class"][class_names.get(c, str(c))] = {m: _stats([float(r[m]) for r in mine]) for m in metrics}
    for key, group in (("all_classes", classes), ("synapse_8_organs", [c for c in subset if c in classes])):
        if not group:
            continue
        cases = sorted({r["case"] for r in rows})
        summary[key] = {"classes": group}
        for m in metrics:
            per_case = []
            for case in cases:
                vals = [float(r[m]) for r in rows if r["case"] == case and int(r["class"]) in group]
                finite = [v for v in vals if not math.isnan(v)]
                per_case.append(float(np.mean(finite)) if finite else math.nan)
            summary[key][m] = _stats(per_case)
    return summary
