# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The preprocessing a plan prescribes, shared by the training and the inference configs: read, reorient,
crop to the body, resample, normalise intensities."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    CropForegroundd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
)
from monai.utils import ensure_tuple

from dlka_monai.inference.transforms import SafeSpacingd

__all__ = ["NORMALIZATION_SCHEMES", "RAS_LABELS", "intensity_transform", "foreground_select", "load_transforms"]

NORMALIZATION_SCHEMES = ("window", "ct", "zscore", "minmax")
"""``window``: ``a_min .. a_max`` mapped to ``b_min .. b_max`` (default ``[0, 1]``) and clipped (the authors' CT
preprocessing: ``[-125, 275] -> [-1, 1]`` for their 2D net);
``ct``: clipped to ``clip`` then z-scored with the dataset's ``mean`` and ``std`` (nnU-Net's CT scheme);
``zscore``: z-scored per image (nnU-Net's scheme for MR and other non-CT images);
``minmax``: each image's own minimum .. maximum, over all channels, mapped to ``b_min .. b_max`` (the
authors' preprocessing of RGB photographs, with ``0 .. 255``)."""

# MONAI's Orientation labels, pinned against its announced change of default: RAS means patient right,
# anterior, superior, as in nibabel and ITK's RAS affines
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def intensity_transform(keys: KeysCollection, normalization: Mapping[str, Any]) -> MapTransform:
    """The MONAI transform of a plan's ``normalization`` (see :data:`NORMALIZATION_SCHEMES`)."""
    scheme = normalization.get("scheme")
    if scheme == "window":
        lo, hi = float(normalization["a_min"]), float(normalization["a_max"])
        b_min, b_max = float(normalization.get("b_min", 0.0)), float(normalization.get("b_max", 1.0))
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=b_min, b_max=b_max, clip=True)
    if scheme == "ct":
        # clipping to [lo, hi] then (x - mean) / std is the linear map of [lo, hi] onto these bounds, clipped
        (lo, hi), mean, std = (float(v) for v in normalization["clip"]), float(normalization["mean"]), float(normalization["std"])
        if std <= 0:
            raise ValueError(f"normalization 'ct' needs a positive std, got {std}.")
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True)
    if scheme == "zscore":
        return NormalizeIntensityd(keys, channel_wise=True)
    if scheme == "minmax":
        return ScaleIntensityd(keys, minv=float(normalization["b_min"]), maxv=float(normalization["b_max"]))
    raise ValueError(f"unknown normalization scheme {scheme!r}; known: {', '.join(NORMALIZATION_SCHEMES)}.")


_CT_BODY_HU = -500.0


def foreground_select(normalization: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What counts as the body before normalisation: for CT the voxels above the window's (or clip's) floor,
    so that the air around the patient is cropped; otherwise the voxels above the image's minimum. An image
    with no such voxel (e.g. a constant one) is kept whole rather than cropped to nothing.

    The ``ct`` scheme's floor is at most -500 HU: its clip comes from foreground percentiles and can lie
    just above air (-958 in nnU-Net's Synapse plan), where scanner noise in the air would keep the whole
    field of view. The lungs (about -800 HU) stay inside the body's box."""
    scheme = normalization.get("scheme")
    floor = {"window": lambda n: n["a_min"], "ct": lambda n: max(n["clip"][0], _CT_BODY_HU)}.get(scheme)
    threshold = None if floor is None else float(floor(normalization))

    def select(x: torch.Tensor) -> torch.Tensor:
        body = x > (x.min() if threshold is None else threshold)
        return body if body.any() else torch.ones_like(body)

    return select


def load_transforms(
    keys: KeysCollection,
    reader: Any,
    axcodes: str | None,
    pixdim: Sequence[float] | None,
    normalization: Mapping[str, Any],
    crop_body: bool = True,
    label_key: str | None = "label",
) -> list[MapTransform]:
    """Read, reorient to ``axcodes``, crop to the body, resample to ``pixdim`` and normalise, as a plan says.

    The body is cropped before resampling, so that the resampling (and, at inference, its inverse on the
    class probabilities) covers only the body's box. Every step is invertible, so ``Invertd`` brings
    predictions back to the input's grid.

    Args:
        keys: the image key first, then any label map (resampled nearest-neighbour).
        reader: ``LoadImaged``'s reader(s).
        axcodes: orientation of the arrays fed to the net; None: no reorientation.
        pixdim: voxel size in mm along those axes (``-1`` keeps an axis); None: no resampling.
        normalization: the plan's intensity normalisation of the image.
        crop_body: crop all keys to the image's body (see :func:`foreground_select`).
        label_key: the key resampled nearest-neighbour, if among ``keys``.
    """
    keys = list(ensure_tuple(keys))
    image = keys[0]
    steps: list[MapTransform] = [LoadImaged(keys, reader=reader, ensure_channel_first=True, image_only=True)]
    if axcodes is not None:
        steps.append(Orientationd(keys, axcodes=axcodes, labels=RAS_LABELS))
    if crop_body:
        steps.append(CropForegroundd(keys, source_key=image, select_fn=foreground_select(normalization), allow_smaller=True))
    if pixdim is not None:
        modes = ["nearest" if k == label_key else "bilinear" for k in keys]
        steps.append(SafeSpacingd(keys, pixdim=pixdim, mode=modes))
    steps.append(intensity_transform(image, normalization))
    return steps
