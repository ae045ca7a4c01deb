# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Per-class statistics of a label map: volume, voxel count, the input's intensity inside each class and
its bounding box. ``dlka-segment`` prints the volumes from them and writes them with ``--statistics``, so
the console and the file hold the same numbers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

__all__ = ["label_statistics", "statistics_path", "volume_summary", "write_statistics"]


def _lps(points_ras: np.ndarray) -> np.ndarray:
    return points_ras * np.array([-1.0, -1.0, 1.0])


def label_statistics(label: torch.Tensor, class_names: Mapping[int, str], image: torch.Tensor | None = None) -> dict:
    """The statistics of every foreground class of ``class_names`` (and of any other value in ``label``).

    Args:
        label: label map ``[*spatial]`` or ``[1, *spatial]`` with its RAS ``affine`` (a MetaTensor, or a
            tensor with an ``affine`` attribute).
        class_names: label value -> name; 0 is the background and left out.
        image: the input's intensities on the same grid, ``[*spatial]`` or ``[1, *spatial]``; without it the
            intensity statistics are ``None``.

    Returns:
        ``{"voxel_volume_ml", "coordinates", "classes": {name: {...}}}``: for each class its ``label``
        value, ``voxels``, ``volume_ml``, ``intensity_mean`` and ``intensity_std`` of ``image`` inside it,
        and ``bounding_box_lps_mm`` (``min``/``max`` of the class's voxel centres in DICOM patient coordinates,
        LPS) and ``bounding_box_voxels`` (first/last index along each array axis); an absent class has 0
        voxels and ``None`` for the rest.

    Raises:
        ValueError: ``image`` and ``label`` of different shapes.
    """
    affine = np.asarray(torch.as_tensor(label.affine).detach().cpu(), dtype=np.float64)
    labels = np.asarray(torch.as_tensor(label).detach().cpu()).round().astype(np.int64)
    labels = labels.reshape(labels.shape[-3:])
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    values = sorted({int(v) for v in class_names} | {int(v) for v in np.unique(labels)} - {0})
    counts = np.bincount(labels.ravel(), minlength=max(values, default=0) + 1)
    if image is not None:
        intensities = np.asarray(torch.as_tensor(image).detach().cpu(), dtype=np.float64)
        if intensities.size != labels.size:
            raise ValueError(f"image {tuple(intensities.shape)} and label map {labels.shape} differ in shape.")
        intensities = intensities.reshape(labels.shape).ravel()
        sums = np.bincount(labels.ravel(), weights=intensities, minlength=len(counts))
        squares = np.bincount(labels.ravel(), weights=intensities**2, minlength=len(counts))
    boxes = ndimage.find_objects(labels)
    classes: dict[str, dict] = {}
    for v in values:
        if v == 0:
            continue
        n = int(counts[v])
        entry = {"label": v, "voxels": n, "volume_ml": n * voxel_ml, "intensity_mean": None, "intensity_std": None,
                 "bounding_box_lps_mm": None, "bounding_box_voxels": None}
        if n:
            box = boxes[v - 1]
            first, last = [s.start for s in box], [s.stop - 1 for s in box]
            # the voxels themselves, not the corners of their index box: tight also in an oblique volume
            index = np.argwhere(labels[box] == v) + first
            world = _lps(index @ affine[:3, :3].T + affine[:3, 3])
            entry["bounding_box_lps_mm"] = {"min": world.min(0).tolist(), "max": world.max(0).tolist()}
            entry["bounding_box_voxels"] = {"first": first, "last": last}
            if image is not None:
                mean = sums[v] / n
                entry["intensity_mean"] = float(mean)
                entry["intensity_std"] = float(np.sqrt(max(squares[v] / n - mean**2, 0.0)))
        classes[class_names.get(v, str(v))] = entry
    return {"voxel_volume_ml": voxel_ml, "coordinates": "LPS (DICOM patient coordinates), mm", "classes": classes}


def volume_summary(statistics: Mapping) -> str:
    """The console's line: the volume of every class found, in mL."""
    found = [f"{name} {c['volume_ml']:.1f} mL" for name, c in statistics["classes"].items() if c["voxels"]]
    return ", ".join(found) or "nothing found"


def statistics_path(output: str | Path) -> Path:
    """``<name>_statistics.json`` beside the segmentation ``output`` (``<name>_seg.nii.gz``, ``<name>_seg.dcm``
    or any ``<name>.nii.gz``)."""
    output = Path(output)
    name = output.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        name = name.removesuffix(suffix)
    return output.with_name(f"{name.removesuffix('_seg')}_statistics.json")


def write_statistics(path: str | Path, statistics: Mapping, **fields) -> Path:
    """Write ``statistics`` as JSON to ``path``, after ``fields`` (e.g. the input and output files)."""
    path = Path(path)
    path.write_text(json.dumps({**{k: str(v) for k, v in fields.items()}, **statistics}, indent=2) + "\n", encoding="utf-8")
    return path
