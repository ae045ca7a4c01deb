# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""A plan derived from a dataset fingerprint (:mod:`dlka_monai.plan.fingerprint`), with nnU-Net's rules.

* **Target spacing**: the median spacing of the cases along each world axis. When one axis is anisotropic
  (nnU-Net: its median spacing is more than ``3`` times the others' and its median size in voxels less than
  a third of theirs), that axis gets the 10th percentile of its spacings instead (but never finer than the
  other axes), so that thick-slice cases are not interpolated onto a grid coarser than most of the data.
* **Normalisation**: CT as nnU-Net (clip to the 0.5 / 99.5 percentiles of the foreground, then z-score with
  the foreground's mean and std: scheme ``"ct"``); any other modality z-scored per image (``"zscore"``).
* **Axis order** (``axcodes``): the coarsest axis of the target spacing first, as nnU-Net transposes its
  data, then the other two in the order of the preset's ``axcodes`` (``SAR`` for every D-LKA preset: the
  paper's (z, y, x) arrays, whose patch embedding (2, 4, 4) is coarse along the first axis). Ties keep the
  preset's order, so axial CT (z coarsest, or isotropic) gets ``SAR``; a sagittal MR with thick slices along
  x gets ``RSA``. Each world axis keeps the direction letter the preset gives it. A 2D preset keeps the
  spacing of its first (slice) axis (``pixdim`` -1): slices are taken along the coarsest axis.
* **Patch coverage**: the D-LKA presets' ``img_size`` is fixed by their learned position embeddings, so the
  planner does not grow or shrink the patch; it warns when, along some axis, the patch covers less than
  :data:`MIN_COVERAGE` of the median case at the target spacing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlka_monai.data.validation import InvalidInputError
from dlka_monai.networks import get_preset, network_arguments
from dlka_monai.plan.fingerprint import is_ct
from dlka_monai.plan.format import make_plan

__all__ = ["ANISOTROPY_THRESHOLD", "MIN_COVERAGE", "target_spacing", "feed_axcodes", "patch_coverage", "plan_from_fingerprint"]

ANISOTROPY_THRESHOLD = 3.0
"""nnU-Net's: an axis is anisotropic when its spacing exceeds this many times the other axes'."""
MIN_COVERAGE = 0.2
"""The fraction of the median case a patch should cover along every axis. The paper's own setting,
dlka3d_synapse's 64×128×128 at 3×0.76×0.76 mm on Synapse (about 150×512×512 voxels at that spacing),
covers about 0.4 along z and 1/4 in-plane; below 1/5 a window sees clearly less context than the paper's
model did (e.g. the same patch on a 0.5 mm MR). nnU-Net grows the patch instead, which the fixed position
embeddings do not allow."""

_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], anisotropy_threshold: float = ANISOTROPY_THRESHOLD
) -> list[float]:
    """nnU-Net's full-resolution target spacing (see the module docstring).

    Args:
        spacings: per case the spacing along each axis, ``[n_cases, 3]`` (mm).
        shapes: per case the shape along the same axes, ``[n_cases, 3]`` (voxels).
        anisotropy_threshold: see :data:`ANISOTROPY_THRESHOLD`.

    Returns:
        the spacing along each axis (mm).
    """
    spacings, shapes = np.asarray(spacings, dtype=float), np.asarray(shapes, dtype=float)
    target = np.percentile(spacings, 50, axis=0)
    median_shape = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > anisotropy_threshold * max(target[others])
    aniso_voxels = median_shape[worst] * anisotropy_threshold < min(median_shape[others])
    if aniso_spacing and aniso_voxels:
        # 1e-5: nnU-Net's, so that the coarse axis stays the coarsest
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), max(target[others]) + 1e-5)
    return [round(float(s), 6) for s in target]  # the affine's float32 noise off (1e-6 mm)


def feed_axcodes(spacing: Sequence[float], base: str = "SAR") -> str:
    """The orientation to feed the net: the coarsest axis first, then the others in ``base``'s order.

    Args:
        spacing: target spacing along the world axes R, A, S (mm).
        base: the preset's ``axcodes``, which sets the direction letters and breaks ties.
    """
    coarsest = max(spacing)
    first = next(c for c in base if np.isclose(spacing[_AXIS_OF_LETTER[c]], coarsest, rtol=1e-3))
    return first + "".join(c for c in base if c != first)


def _along(values: Sequence[float], axcodes: str) -> list[float]:
    """``values`` given along R, A, S, in the order of ``axcodes``."""
    return [values[_AXIS_OF_LETTER[c]] for c in axcodes]

def _along_inverse(values: Sequence[float], axcodes: str) -> list[float]:
    """``values`` given in the order of ``axcodes``, along R, A, S."""
    out = [0.0, 0.0, 0.0]
    for v, c in zip(values, axcodes):
        out[_AXIS_OF_LETTER[c]] = v
    return out


def patch_coverage(fingerprint: Mapping[str, Any], spacing: Sequence[float], img_size: Sequence[int]) -> tuple[list[float], list[float]]:
    """The median case's shape at ``spacing`` and the fraction of it a patch of ``img_size`` covers.

    Args:
        fingerprint: see :func:`dlka_monai.plan.fingerprint.dataset_fingerprint`.
        spacing: target spacing along R, A, S (mm).
        img_size: the patch along R, A, S (voxels).

    Returns:
        ``(median_shape, coverage)`` along R, A, S; coverage is at most 1.
    """
    extents = np.asarray([np.multiply(c["shape"], c["spacing"]) for c in fingerprint["cases"]], dtype=float)
    median_shape = np.median(extents, axis=0) / np.asarray(spacing, dtype=float)
    coverage = np.minimum(1.0, np.asarray(img_size, dtype=float) / median_shape)
    return [float(v) for v in median_shape], [float(v) for v in coverage]


def _normalization(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    modalities = list(fingerprint["modality"].values())
    if not any(is_ct(m) for m in modalities):
        return {"scheme": "zscore"}
    if len(modalities) > 1:
        raise InvalidInputError(
            f"CT normalisation is for single-channel images; the dataset has channels {', '.join(modalities)}."
        )
    stats = fingerprint["foreground_intensity"]["0"]
    if stats["std"] <= 0:
        raise InvalidInputError(f"the CT foreground has a single intensity ({stats['mean']:g}): it cannot be z-scored.")
    return {
        "scheme": "ct",
        "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
        "mean": stats["mean"],
        "std": stats["std"],
    }


def plan_from_fingerprint(
    fingerprint: Mapping[str, Any],
    preset: str,
    network: Mapping[str, Any] | None = None,
    min_coverage: float = MIN_COVERAGE,
) -> dict[str, Any]:
    """The plan of ``preset`` for the dataset of ``fingerprint`` (see the module docstring).

    Args:
        fingerprint: see :func:`dlka_monai.plan.fingerprint.dataset_fingerprint`.
        preset: registry name of the network.
        network: network arguments replacing the preset's; ``in_channels`` and ``out_channels`` default to
            the dataset's channels and classes.
        min_coverage: warn (``UserWarning``) when the patch covers less than this fraction of the median case
            along an axis.

    Returns:
        a checked plan (:func:`dlka_monai.plan.make_plan`), with the fingerprint under ``"dataset"`` and the
        planner's working (``target_spacing`` and median shape along R, A, S, ``patch_coverage`` along the
        fed axes) under ``"planning"``.
    """
    spec = get_preset(preset)
    labels = {int(k): v for k, v in fingerprint["labels"].items()}
    if sorted(labels) != list(range(len(labels))):
        raise InvalidInputError(f"the dataset's label values {sorted(labels)} are not 0..{len(labels) - 1}: renumber them.")
    network = {"in_channels": int(fingerprint["channels"]), "out_channels": len(labels), **dict(network or {})}
    cases = fingerprint["cases"]
    spacing = target_spacing([c["spacing"] for c in cases], [c["shape"] for c in cases])
    axcodes = feed_axcodes(spacing, spec.axcodes or "SAR")
    pixdim = _along(spacing, axcodes)
    img_size = network_arguments(preset, **network)["img_size"]
    img_size = [int(v) for v in ([img_size] * spec.spatial_dims if np.isscalar(img_size) else img_size)]
    if spec.spatial_dims == 2:
        pixdim[0] = -1.0  # the slices keep their spacing; the patch covers the plane
        img_size = [1, *img_size]
    median_shape, coverage = patch_coverage(fingerprint, spacing, _along_inverse(img_size, axcodes))
    fed_shape, fed_coverage = _along(median_shape, axcodes), _along(coverage, axcodes)
    low = [i for i in range(3 - spec.spatial_dims, 3) if fed_coverage[i] < min_coverage]  # a 2D patch: the plane
    if low:
        parts = [
            f"axis {i} ({axcodes[i]}: {fed_coverage[i]:.2f}, {img_size[i]} of {fed_shape[i]:.0f} voxels at {pixdim[i]:.3g} mm; "
            f"{pixdim[i] * min_coverage / fed_coverage[i]:.3g} mm would cover {min_coverage:g})"
            for i in low
        ]
        warnings.warn(
            f"{preset}'s fixed img_size {tuple(img_size[3 - spec.spatial_dims:])} covers less than {min_coverage:g} of "
            f"the median case along {', '.join(parts)}: each window sees less context than the paper's model did; "
            "consider a coarser pixdim in the plan.",
            stacklevel=2,
        )
    planning = {
        "target_spacing": spacing,
        "median_shape": median_shape,
        "axes": "RAS",
        "patch_coverage": fed_coverage,
        "min_coverage": min_coverage,
    }
    modalities = list(dict.fromkeys(fingerprint["modality"].values()))
    return make_plan(
        preset,
        network,
        axcodes=axcodes,
        pixdim=pixdim,
        normalization=_normalization(fingerprint),
        class_names=labels,
        modality="CT" if any(is_ct(m) for m in modalities) else "+".join(modalities),
        dataset=dict(fingerprint),
        planning=planning,
    )
