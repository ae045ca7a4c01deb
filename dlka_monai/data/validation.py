# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Checks of input images, label maps, datalists and output folders, shared by the data layer, the command
line and the bundle, with one-line messages that name the file and the problem."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from dlka_monai.data.readers import NIFTI_SUFFIXES, SITKReader

__all__ = ["InvalidInputError", "check_image", "check_label", "check_datalist", "check_output_dir", "read_json_object"]

# read by their own loaders, which check them
_OTHER_FORMATS = (".h5", ".npz")


class InvalidInputError(ValueError):
    """An input that cannot be used; the message names the file and the problem."""


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in the file ``path``, a ``what`` (e.g. ``"datalist file"``).

    Raises:
        InvalidInputError: in one line naming the file: it is missing, unreadable, not JSON, or holds
            another JSON value than an object.
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InvalidInputError(f"{path}: no such {what}.") from e
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path}: cannot be read as a JSON {what}: {e}") from e
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path}: a {what} holds a JSON object, not a {type(value).__name__}.")
    return value


class _Volume(NamedTuple):
    shape: tuple[int, ...]  # spatial axes first, any channel/time axis last
    spacing: tuple[float, ...]
    affine: np.ndarray  # RAS
    data: np.ndarray | None


def _read(path: Path, series_uid: str | None, data: bool) -> _Volume:
    if path.name.endswith(NIFTI_SUFFIXES):
        # nibabel, not SimpleITK: SimpleITK zero-fills a truncated .nii.gz without complaint
        # nibabel logs the header fixes it makes; they are reported below as errors, in one line
        level = nib.imageglobals.logger.level
        nib.imageglobals.logger.setLevel(logging.CRITICAL)
        try:
            image = nib.load(path)
        finally:
            nib.imageglobals.logger.setLevel(level)
        # the header as written: nibabel's loaded header already has 0 spacings set to 1 and negative ones
        # made positive, which would let a broken header through
        with nib.openers.ImageOpener(path) as f:
            raw = type(image.header).from_fileobj(f, check=False)
        zooms = tuple(float(z) for z in raw["pixdim"][1 : len(image.shape) + 1])
        return _Volume(tuple(image.shape), zooms, image.affine, np.asanyarray(image.dataobj) if data else None)
    reader = SITKReader(series_uid=series_uid, suffixes=())
    try:
        image = reader.read(path) if path.is_dir() else sitk.ReadImage(str(path))
    except (ValueError, FileNotFoundError) as e:  # SITKReader's messages name the folder and list its series
        raise InvalidInputError(str(e)) from e
    channels = image.GetNumberOfComponentsPerPixel()
    shape = tuple(image.GetSize()) + ((channels,) if channels > 1 else ())
    # a copy: a view would outlive the image it points into, which is freed on return
    return _Volume(shape, tuple(image.GetSpacing()), SITKReader._get_affine(image), sitk.GetArrayFromImage(image))


def _load(path: str | os.PathLike, series_uid: str | None = None, data: bool = True) -> _Volume:
    """The volume at ``path``, checked to be a readable single-channel 3D image with positive spacing; its
    voxels are read (and so checked to be all there) only with ``data``, but for formats SimpleITK reads."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder.")
    try:
        volume = _read(path, series_uid, data)
    except InvalidInputError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel/SimpleITK/zlib raise many types for a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise InvalidInputError(f"{path}: cannot be read as an image (corrupt, truncated or not an image): {reason}") from e
    shape = volume.shape[:3] if len(volume.shape) == 4 and volume.shape[3] == 1 else volume.shape
    if len(shape) != 3 or min(shape) < 2:
        raise InvalidInputError(f"{path}: is {'x'.join(map(str, shape))} ({len(shape)}D); a single-channel 3D volume is expected.")
    spacing = np.asarray(volume.spacing[:3], dtype=float)
    if not (np.isfinite(spacing).all() and np.isfinite(volume.affine).all()) or min(spacing) <= 0 or min(
        np.linalg.norm(volume.affine[:3, :3], axis=0)
    ) <= 0:
        raise InvalidInputError(f"{path}: voxel spacing {tuple(round(s, 4) for s in volume.spacing[:3])} is not positive and finite.")
    return volume._replace(shape=shape)


def check_image(path: str | os.PathLike, series_uid: str | None = None) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` is a readable, single-channel 3D image with
    positive spacing and finite intensities (a NIfTI/MetaImage/NRRD file or a DICOM series folder).

    Args:
        path: image file or DICOM series folder.
        series_uid: the series to use in a folder with several DICOM series; without it such a folder is an
            error that lists them.
    """
    if not np.isfinite(_load(path, series_uid).data).all():
        raise InvalidInputError(f"{path}: contains NaN or infinite intensities.")


def check_label(
    path: str | os.PathLike, image: str | os.PathLike | None = None, label_values: Sequence[int] | None = None
) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` is a label map of whole numbers among
    ``label_values`` on the same voxel grid (shape and affine) as ``image``. An empty (all background)
    label map is valid.

    Args:
        path: label map file.
        image: its image, to compare the grids with.
        label_values: the values the configured classes use, e.g. ``range(14)``; None not to check.
    """
    label = _load(path)
    values = np.unique(np.asarray(label.data))
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        odd = [v for v in values.tolist() if not (np.isfinite(v) and v == round(v))]
        raise InvalidInputError(f"{path}: label map has non-integer values ({', '.join(f'{v:g}' for v in odd[:5])}).")
    if label_values is not None:
        outside = sorted(set(values.astype(np.int64).tolist()) - {int(v) for v in label_values})
        if outside:
            raise InvalidInputError(
                f"{path}: label values {', '.join(map(str, outside[:10]))} are outside the configured classes "
                f"{_ranges(label_values)}."
            )
    if image is None:
        return
    reference = _load(image, data=False)  # its grid only
    if label.shape != reference.shape:
        raise InvalidInputError(
            f"{path}: shape {'x'.join(map(str, label.shape))} differs from its image {image} "
            f"({'x'.join(map(str, reference.shape))})."
        )
    spacing = max(abs(s) for s in reference.spacing[:3])
    linear = np.abs(label.affine[:3, :3] - reference.affine[:3, :3]).max()
    origin = np.abs(label.affine[:3, 3] - reference.affine[:3, 3]).max()
    # float32 headers round the matrix to ~1e-7 relative; 0.01 mm of origin is far below a voxel
    if linear > 1e-4 * spacing or origin > 1e-2:
        raise InvalidInputError(
            f"{path}: affine differs from its image {image}'s (by up to {max(linear, origin):.3g} mm); "
            "the label map must be on the image's voxel grid."
        )


def _ranges(values: Sequence[int]) -> str:
    values = sorted({int(v) for v in values})
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def check_datalist(
    entries: Sequence[dict], label_values: Sequence[int] | None = None, series_uid: str | None = None
) -> list[dict]:
    """Check every image (:func:`check_image`) and label map (:func:`check_label`, against its image) of
    a datalist; entries in formats with loaders of their own (``.h5``, ``.npz``) are left to them.

    Args:
        entries: ``{"image": path or [paths], "label": path (optional)}`` dicts.
        label_values: see :func:`check_label`.
        series_uid: see :func:`check_image`.

    Returns:
        ``entries``, unchanged, so the call can wrap a datalist in a config.
    """
    for entry in entries:
        images = _paths(entry["image"])
        if any(p.endswith(_OTHER_FORMATS) for p in images):
            continue
        for image in images:
            check_image(image, series_uid)
        if entry.get("label") is not None:
            check_label(entry["label"], images[0], label_values)
    return list(entries)


def check_output_dir(path: str | os.PathLike) -> str:
    """Create the output folder ``path`` if needed and check that files can be written in it.

    Returns:
        ``path`` as a string.
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InvalidInputError(f"{path}: output folder is not writable ({e.strerror or e}).") from e
    return str(path)
