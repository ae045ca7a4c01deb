# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Image readers: SimpleITK (DICOM series, MetaImage, NRRD) for ``monai.transforms.LoadImage``, and a
loader of the D-LKA authors' preprocessed NIH Pancreas h5 files."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader, MetaTensor
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, convert_to_dst_type, ensure_tuple

__all__ = ["NIFTI_SUFFIXES", "SITKReader", "LoadPancreasH5d"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
"""File name endings of NIfTI images."""


class SITKReader(ImageReader):
    """Read images with SimpleITK: a DICOM series given its folder, or a single file (MetaImage, NRRD, a
    DICOM slice, ...). The output follows ``monai.data.ITKReader``: the array in (x, y, z[, channel])
    order, ``affine`` in RAS (ITK's LPS with the first two rows negated), ``space="RAS"``.

    ``monai.transforms.LoadImage(reader=[SITKReader()])`` tries its user readers before the default ones and
    without looking at suffixes, so ``read`` refuses what ``verify_suffix`` rejects: NIfTI, which is not
    among the default ``suffixes``, then falls through to ``NibabelReader``.

    Args:
        series_uid: the SeriesInstanceUID to read from a folder holding several DICOM series; a folder with
            several series and no ``series_uid`` is an error that lists them.
        suffixes: file suffixes to accept, without the dot; directories are always accepted as DICOM
            series. Add ``"nii"`` and ``"nii.gz"`` to read NIfTI with SimpleITK too.
        kwargs: passed to ``SimpleITK.ReadImage``, e.g. ``outputPixelType=SimpleITK.sitkFloat32``.
    """

    def __init__(
        self, series_uid: str | None = None, suffixes: Sequence[str] = ("mha", "mhd", "nrrd", "dcm"), **kwargs
    ) -> None:
        super().__init__()
        self.series_uid = series_uid
        self.suffixes = tuple(f".{s.lower().lstrip('.')}" for s in ensure_tuple(suffixes))
        self.kwargs = kwargs
        self.filenames: tuple[str, ...] = ()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file name is a directory (a DICOM series) or ends with one of ``suffixes``.

        Args:
            filename: file name or a list of file names.
        """
        return all(os.path.isdir(f) or f"{f}".lower().endswith(self.suffixes) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> sitk.Image | list[sitk.Image]:
        """Read one image, or several to be stacked as channels by ``get_data``.

        Args:
            data: file or DICOM series folder name, or a list of them.
            kwargs: passed to ``SimpleITK.ReadImage``, overriding the constructor's ``kwargs``.
        """
        filenames = tuple(f"{f}" for f in ensure_tuple(data))
        refused = [f for f in filenames if not self.verify_suffix(f)]
        if refused:
            raise ValueError(
                f"SITKReader reads DICOM series folders and {', '.join(self.suffixes)} files, not {', '.join(refused)}."
            )
        self.filenames = filenames
        kwargs_ = {**self.kwargs, **kwargs}
        images = [sitk.ReadImage(self.series_files(f) if os.path.isdir(f) else f, **kwargs_) for f in filenames]
        return images if len(images) > 1 else images[0]

    def series_files(self, folder: str) -> list[str]:
        """The sorted slice files of the chosen DICOM series in ``folder``."""
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        if not uids:
            content = "is empty" if not any(Path(folder).iterdir()) else "holds no DICOM series"
            raise FileNotFoundError(f"DICOM folder {folder} {content}.")
        series = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)) for uid in uids}
        listing = "; ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
        if self.series_uid is not None:
            if self.series_uid not in series:
                raise ValueError(f"DICOM folder {folder} has no series {self.series_uid}; it holds: {listing}.")
            return _check_geometry(folder, series[self.series_uid])
        if len(series) > 1:
            raise ValueError(
                f"DICOM folder {folder} holds {len(series)} series; choose one with series_uid (dlka-segment --series): "
                f"{listing}."
            )
        return _check_geometry(folder, series[uids[0]])

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """The data array and meta dict of images from ``read``; several images are stacked as channels
        (first axis), with the meta of the first.

        Args:
            img: a SimpleITK image or a list of them.
        """
        # not ensure_tuple: a SimpleITK image is itself iterable (over its pixels)
        images = list(img) if isinstance(img, (list, tuple)) else [img]
        filenames = self.filenames if len(self.filenames) == len(images) else (None,) * len(images)
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for image, filename in zip(images, filenames):
            data = sitk.GetArrayFromImage(image)  # (z, y, x[, channel])
            scalar = image.GetNumberOfComponentsPerPixel() == 1
            data = data.T if scalar else np.moveaxis(data.T, 0, -1)
            header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_")}
            affine = self._get_affine(image)
            spacing = np.asarray(image.GetSpacing())[: affine.shape[0] - 1]
            header[MetaKeys.ORIGINAL_AFFINE] = affine
            header[MetaKeys.AFFINE] = affine.copy()
            header[MetaKeys.SPACE] = SpaceKeys.RAS
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())[: affine.shape[0] - 1]
            header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if scalar else -1
            # NIfTI-style pixdim: qfac (handedness), then the spacing, as NibabelReader reports it
            qfac = 1.0 if np.linalg.det(affine[:-1, :-1]) >= 0 else -1.0
            header[MetaKeys.PIXDIM] = np.concatenate([[qfac], spacing, np.ones(7 - len(spacing))])
            header["spacing"] = spacing
            if filename is not None:
                header[ImageMetaKey.FILENAME_OR_OBJ] = filename
            arrays.append(data)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta

    @staticmethod
    def _get_affine(image: sitk.Image) -> np.ndarray:
        """The RAS affine of a SimpleITK image (at most 3 spatial dimensions, as ITKReader)."""
        ndim = image.GetDimension()
        sr = min(ndim, 3)
        direction = np.asarray(image.GetDirection()).reshape(ndim, ndim)[:sr, :sr]
        affine = np.eye(sr + 1)
        affine[:sr, :sr] = direction @ np.diag(image.GetSpacing()[:sr])
        affine[:sr, sr] = image.GetOrigin()[:sr]
        return orientation_ras_lps(affine)


def _check_geometry(folder: str, files: list[str]) -> list[str]:
    """``files`` (a series sorted by ImageSeriesReader), if their slices make one regular volume: one
    orientation, distinct positions, even spacing. SimpleITK only warns and assumes even spacing, which
    would put every slice after a gap or a tilt in the wrong place, so a series that is not a volume is
    refused here in one line."""
    if len(files) < 2:
        return files
    header = sitk.ImageFileReader()
    orientations, positions = [], []
    for f in files:
        header.SetFileName(f)
        header.ReadImageInformation()
        tags = {t: header.GetMetaData(t) if header.HasMetaDataKey(t) else "" for t in ("0020|0037", "0020|0032")}
        try:
            orientations.append([float(v) for v in tags["0020|0037"].split("\\")])
            positions.append([float(v) for v in tags["0020|0032"].split("\\")])
        except ValueError:
            raise ValueError(f"DICOM series in {folder}: slice {f} has no valid ImagePositionPatient/ImageOrientationPatient.") from None
    orientations, positions = np.asarray(orientations), np.asarray(positions)
    turned = int((np.abs(orientations - orientations[0]).max(axis=1) > 1e-3).sum())
    if turned:
        raise ValueError(
            f"DICOM series in {folder}: {turned} of its {len(files)} slices have another orientation "
            "(ImageOrientationPatient) than the first; a volume has one."
        )
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    steps = np.diff(np.sort(positions @ normal))
    spacing = float(np.median(steps))
    tolerance = max(0.01, 0.01 * spacing)
    if steps.min() < tolerance:
        raise ValueError(f"DICOM series in {folder}: {int((steps < tolerance).sum()) + 1} slices share a position; a volume has one slice per position.")
    uneven = np.flatnonzero(np.abs(steps - spacing) > tolerance)
    if uneven.size:
        multiples = steps[uneven] / spacing
        if np.allclose(multiples, multiples.round(), atol=tolerance / spacing) and (multiples.round() >= 2).all():
            missing = int((multiples.round() - 1).sum())
            raise ValueError(
                f"DICOM series in {folder}: {missing} slice(s) missing: a gap of {steps[uneven[0]]:.4g} mm after "
                f"slice {uneven[0] + 1} of {len(files)} where the spacing is {spacing:.4g} mm."
            )
        raise ValueError(
            f"DICOM series in {folder}: irregular slice spacing, from {steps.min():.4g} to {steps.max():.4g} mm; "
            "resample it to a regular grid first."
        )
    return files


class LoadPancreasH5d(MapTransform):
    """Load the D-LKA authors' preprocessed NIH Pancreas h5 files: ``d[key]`` is the path of an h5 file whose
    datasets ``image`` and ``label`` hold the (x, y, z) arrays, already resampled to 1 mm and normalised.
    Each key gets a ``MetaTensor`` with an identity (1 mm) affine and ``original_channel_dim="no_channel"``,
    so ``EnsureChannelFirstd``, ``Spacingd`` and ``Orientationd`` work after it.

    Args:
        keys: keys of the items to load.
        dataset_names: the h5 dataset to read for each key; a key not in it reads the dataset of its own name.
        dtype: data type of the output, None to keep the stored one.
        allow_missing_keys: don't raise if a key is missing from the data dict.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        dataset_names: Mapping[Hashable, str] | None = None,
        dtype: DtypeLike | None = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dataset_names = dict(dataset_names or {})
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._load(f"{d[key]}", self.dataset_names.get(key, f"{key}"))
        return d

    def _load(self, filename: str, dataset: str) -> MetaTensor:
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"NIH Pancreas h5 file {filename} does not exist.")
        with h5py.File(filename, "r") as f:
            if dataset not in f:
                raise KeyError(f"h5 file {filename} has no dataset {dataset!r}; it has: {', '.join(f.keys())}.")
            array = f[dataset][()]
        if self.dtype is not None:
            array = convert_to_dst_type(array, dst=array, dtype=self.dtype)[0]
        meta = {
            MetaKeys.AFFINE: np.eye(4),
            MetaKeys.ORIGINAL_AFFINE: np.eye(4),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:3]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            ImageMetaKey.FILENAME_OR_OBJ: filename,
        }
        return MetaTensor.ensure_torch_and_prune_meta(array, meta)
