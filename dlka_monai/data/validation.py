# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Checks of input images, shared by the command line and the bundle, with one-line messages."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from dlka_monai.data.datalist import NIFTI_SUFFIXES

__all__ = ["InvalidInputError", "check_image"]


class InvalidInputError(ValueError):
    """An input image that cannot be segmented; the message names the file and the problem."""


def _read(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], np.ndarray]:
    """(shape with any channel/time axis last, spacing, voxel array) of a file or DICOM series folder."""
    if path.name.endswith(NIFTI_SUFFIXES):
        # nibabel, not SimpleITK: SimpleITK zero-fills a truncated .nii.gz without complaint
        image = nib.load(path)
        return tuple(image.shape), tuple(float(z) for z in image.header.get_zooms()), np.asanyarray(image.dataobj)
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InvalidInputError(f"{path}: folder holds no NIfTI file and no DICOM series.")
        if len(series) > 1:
            raise InvalidInputError(f"{path}: folder holds {len(series)} DICOM series ({', '.join(series)}); pass one.")
        image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
    else:
        image = sitk.ReadImage(str(path))
    shape = tuple(image.GetSize()) + ((image.GetNumberOfComponentsPerPixel(),) if image.GetNumberOfComponentsPerPixel() > 1 else ())
    return shape, tuple(image.GetSpacing()), sitk.GetArrayViewFromImage(image)


def check_image(path: str | os.PathLike) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` is a readable, single-channel 3D image with
    positive spacing and finite intensities (a NIfTI/MetaImage/NRRD file or a DICOM series folder)."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder.")
    try:
        shape, spacing, data = _read(path)
    except InvalidInputError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel/SimpleITK/zlib raise many types for a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise InvalidInputError(f"{path}: cannot be read as an image (corrupt, truncated or not an image): {reason}") from e
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise InvalidInputError(f"{path}: is {'x'.join(map(str, shape))} ({len(shape)}D); a single-channel 3D volume is expected.")
    if min(spacing[:3]) <= 0:
        raise InvalidInputError(f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing[:3])} is not positive.")
    if not np.isfinite(data).all():
        raise InvalidInputError(f"{path}: contains NaN or infinite intensities.")
